//! HTTP status names as Aperture's (and Envoy's) `StatusCode` enum spells them, so a policy
//! can say `denied_response_status_code: TooManyRequests` as well as `429`.

/// (name, code) for every status Aperture's enum lists.
pub const STATUS_NAMES: &[(&str, u16)] = &[
    ("Continue", 100),
    ("OK", 200),
    ("Created", 201),
    ("Accepted", 202),
    ("NonAuthoritativeInformation", 203),
    ("NoContent", 204),
    ("ResetContent", 205),
    ("PartialContent", 206),
    ("MultiStatus", 207),
    ("AlreadyReported", 208),
    ("IMUsed", 226),
    ("MultipleChoices", 300),
    ("MovedPermanently", 301),
    ("Found", 302),
    ("SeeOther", 303),
    ("NotModified", 304),
    ("UseProxy", 305),
    ("TemporaryRedirect", 307),
    ("PermanentRedirect", 308),
    ("BadRequest", 400),
    ("Unauthorized", 401),
    ("PaymentRequired", 402),
    ("Forbidden", 403),
    ("NotFound", 404),
    ("MethodNotAllowed", 405),
    ("NotAcceptable", 406),
    ("ProxyAuthenticationRequired", 407),
    ("RequestTimeout", 408),
    ("Conflict", 409),
    ("Gone", 410),
    ("LengthRequired", 411),
    ("PreconditionFailed", 412),
    ("PayloadTooLarge", 413),
    ("URITooLong", 414),
    ("UnsupportedMediaType", 415),
    ("RangeNotSatisfiable", 416),
    ("ExpectationFailed", 417),
    ("MisdirectedRequest", 421),
    ("UnprocessableEntity", 422),
    ("Locked", 423),
    ("FailedDependency", 424),
    ("UpgradeRequired", 426),
    ("PreconditionRequired", 428),
    ("TooManyRequests", 429),
    ("RequestHeaderFieldsTooLarge", 431),
    ("InternalServerError", 500),
    ("NotImplemented", 501),
    ("BadGateway", 502),
    ("ServiceUnavailable", 503),
    ("GatewayTimeout", 504),
    ("HTTPVersionNotSupported", 505),
    ("VariantAlsoNegotiates", 506),
    ("InsufficientStorage", 507),
    ("LoopDetected", 508),
    ("NotExtended", 510),
    ("NetworkAuthenticationRequired", 511),
];

/// The code for an enum name (`TooManyRequests` -> 429).
pub fn code_for_name(name: &str) -> Option<u16> {
    STATUS_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| c)
}

/// The default status a flow denied by a rate or concurrency limiter gets.
pub const TOO_MANY_REQUESTS: u16 = 429;

/// The default status a flow refused by a scheduler gets.
pub const SERVICE_UNAVAILABLE: u16 = 503;

/// The status a flow the server cannot judge gets (a tokens label that is not a cost).
pub const BAD_REQUEST: u16 = 400;

/// An HTTP status code, given as a number (429) or Aperture's enum name (`TooManyRequests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// Whether this is a status a denied flow can carry (100..=599).
    pub fn is_http_status(self) -> bool {
        (100..=599).contains(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(StatusCode(n)),
            Raw::Name(name) => code_for_name(&name).map(StatusCode).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown status code name {name:?} (use a number such as 429 or a name such as TooManyRequests)"
                ))
            }),
        }
    }
}

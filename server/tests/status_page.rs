//! The admin port's status page in a real headless browser (Debian's chromium, which
//! scripts/install-chromium.sh installs for the suite): the page loads with no console
//! errors and shows the numbers this test's own traffic produced. Also `/api/v1/status`
//! read directly, with exact counts.

mod common;

use common::deps::require;
use common::{cli_check, start_server, RunningServer};
use std::process::Command;
use std::time::Duration;
use tollgate_server::admin::client::AdminClient;

const TOKEN: &str = "status-page-token";

/// One shard, two policies of five tokens per user that never refill: known outcomes.
fn config() -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: "off", shards: 1, admin_token: {TOKEN} }}
policies:
  - policy_name: five_per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 0
      parameters: {{ interval: 1s, limit_by_label_key: user }}
      selectors: [{{ control_point: api }}]
  - policy_name: quiet
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 0
      parameters: {{ interval: 1s, limit_by_label_key: user }}
      selectors: [{{ control_point: other }}]
"#
    )
}

/// 7 checks for alice (5 accepted, 2 rejected) and 1 for bob: 6 accepted, 2 rejected, 2
/// buckets.
fn traffic(server: &RunningServer) {
    for user in ["alice"; 7].into_iter().chain(["bob"]) {
        cli_check(server, "api", user);
    }
}

fn chromium() -> Result<String, String> {
    let found = Command::new("chromium").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => Ok("chromium".into()),
        _ => Err("chromium is not installed (scripts/install-chromium.sh installs it)".into()),
    }
}

#[test]
fn status_api_counts_the_traffic_exactly() {
    let server = start_server(&config());
    traffic(&server);
    let admin = server.admin.expect("admin port").to_string();
    let client = AdminClient::new(&admin, Some(TOKEN.into()), Duration::from_secs(10));
    let status: serde_json::Value = client.get_json("/api/v1/status").expect("status");
    let p = &status["policies"][0];
    assert_eq!(p["name"], "five_per_user");
    assert_eq!(p["kind"], "rate_limiter");
    assert_eq!(p["decisions"]["accepted"], 6);
    assert_eq!(p["decisions"]["rejected"], 2);
    assert_eq!(p["buckets"], 2);
    assert_eq!(status["policies"][1]["decisions"]["accepted"], 0);
    assert_eq!(status["shards"][0]["decisions"], 8);
    assert_eq!(status["shards"][0]["buckets"], 2);
    assert!(status["shards"][0]["latency_p99_us"]
        .as_f64()
        .is_some_and(|us| us > 0.0));
    assert_eq!(status["members"][0]["state"], "alive");
    // The page itself is served without the token; the API is not.
    let anonymous = AdminClient::new(&admin, None, Duration::from_secs(10));
    let (code, page) = anonymous.get("/").expect("page");
    assert_eq!(code, 200);
    assert!(
        page.contains("<script>") && !page.contains("src=\"http"),
        "self-contained"
    );
    assert_eq!(anonymous.get("/api/v1/status").expect("status").0, 401);
}

#[test]
fn status_page_shows_the_traffic_in_a_headless_browser() {
    let Some(browser) = require("chromium", chromium()) else {
        return;
    };
    let server = start_server(&config());
    traffic(&server);
    let admin = server.admin.expect("admin port");
    let profile = common::temp_dir("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            // Long enough in virtual time for several 2 s polls; the browser fast-forwards it.
            "--virtual-time-budget=7000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{admin}/#token={TOKEN}"))
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    // No console errors: chromium logs console messages as `CONSOLE(line)`.
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // The script ran, polled, and drew what the traffic did.
    assert!(dom.contains("data-polls=\""), "never polled:\n{dom}");
    let policy = dom
        .split("data-policy=\"five_per_user\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no five_per_user panel:\n{dom}"));
    let row = |field: &str| -> String {
        let after = policy
            .split(&format!("data-field=\"{field}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no {field} row:\n{policy}"));
        let cells: Vec<&str> = after
            .split("<td>")
            .skip(1)
            .take(2)
            .map(|c| c.split("</td>").next().unwrap_or(""))
            .collect();
        cells.get(1).copied().unwrap_or("").to_string()
    };
    assert_eq!(row("accepted"), "6", "{policy}");
    assert_eq!(row("rejected"), "2", "{policy}");
    assert_eq!(row("buckets"), "2", "{policy}");
    // The top keys of the last minute: alice took 5 tokens, bob 1.
    assert!(policy.contains("<td>alice</td>"), "{policy}");
    // Shards and members are drawn; no error shown.
    assert!(dom.contains("<td>alive</td>"), "{dom}");
    assert!(
        dom.contains("<div class=\"error\" id=\"error\"></div>"),
        "{dom}"
    );
}

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! The deployment files, checked against the code so they cannot drift from it: the
//! Dockerfile, the Kubernetes manifests (deploy/kubernetes/) and the systemd unit
//! (deploy/systemd/). No cluster and no container builder needed: the facts come from the
//! `tollgate` binary itself (`--help`, `--version`, `validate`) and from the config files
//! the manifests mount. Beyond the suite, `scripts/check-manifests.sh` validates the built
//! kustomization against the Kubernetes schemas and `scripts/build-image.sh` builds the
//! image for real.
//!
//! The probes are checked in both forms: `tcpSocket` on a port the config binds (today),
//! and `httpGet` on `/readyz` / `/healthz` of the `server.admin` port, once the binary
//! serves them (its `serve --help` must name the path), so switching is a manifest edit.

#[path = "deploy/cli.rs"]
mod cli;
mod common;
#[path = "deploy/files.rs"]
mod files;

use files::{get, get_seq, get_str, read};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

const KUBERNETES: &str = "deploy/kubernetes";
const KUSTOMIZATION: &str = "deploy/kubernetes/kustomization.yaml";
const UNIT: &str = "deploy/systemd/tollgate.service";
const UNIT_CONFIG: &str = "deploy/systemd/tollgate.yaml";
/// glommio refuses to start an executor below this RLIMIT_MEMLOCK (its `MIN_MEMLOCK_LIMIT`).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// The port of an `IP:port` config value.
fn port_of(addr: &str, origin: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{origin}: {addr:?} is not IP:port: {e}"))
        .port()
}

fn duration(text: &str, origin: &str) -> Duration {
    tollgate_policy::duration::parse_duration(text)
        .unwrap_or_else(|e| panic!("{origin}: {text:?}: {e}"))
}

/// What the Kubernetes deployment consists of, as kustomize would build it.
struct Kubernetes {
    kustomization: Value,
    /// The config the ConfigMap is generated from, and its path.
    config: Value,
    config_file: String,
    /// Every object of the `resources:` files, with the file it came from.
    objects: Vec<(String, Value)>,
}

impl Kubernetes {
    fn load() -> Self {
        let kustomization = files::yaml_documents(KUSTOMIZATION).remove(0);
        let config_file = format!(
            "{KUBERNETES}/{}",
            Self::config_generator_file(&kustomization)
        );
        let config = files::yaml_documents(&config_file).remove(0);
        let mut objects = Vec::new();
        for resource in get_seq(&kustomization, "resources") {
            let file = format!(
                "{KUBERNETES}/{}",
                resource.as_str().expect("resources: file names")
            );
            for object in files::yaml_documents(&file) {
                objects.push((file.clone(), object));
            }
        }
        Kubernetes {
            kustomization,
            config,
            config_file,
            objects,
        }
    }

    /// The `tollgate` ConfigMap generator's one file.
    fn config_generator_file(kustomization: &Value) -> String {
        let generator = Self::generator(kustomization, "configMapGenerator", "tollgate");
        match get_seq(generator, "files") {
            [one] => one.as_str().expect("a file name").to_string(),
            other => panic!(
                "{KUSTOMIZATION}: the tollgate ConfigMap should hold one file, not {}",
                other.len()
            ),
        }
    }

    fn generator<'k>(kustomization: &'k Value, kind: &str, name: &str) -> &'k Value {
        get_seq(kustomization, kind)
            .iter()
            .find(|g| g.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("{KUSTOMIZATION}: no {kind} named {name}"))
    }

    fn objects_of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(kind))
            .map(|(_, o)| o)
            .collect()
    }

    fn one_of_kind(&self, kind: &str) -> &Value {
        match self.objects_of_kind(kind).as_slice() {
            [one] => one,
            other => panic!("expected one {kind} in {KUBERNETES}, found {}", other.len()),
        }
    }

    fn statefulset(&self) -> &Value {
        self.one_of_kind("StatefulSet")
    }

    fn service(&self, name: &str) -> &Value {
        self.objects_of_kind("Service")
            .into_iter()
            .find(|s| get(s, "metadata.name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no Service named {name} in {KUBERNETES}"))
    }

    fn container(&self) -> &Value {
        match get_seq(self.statefulset(), "spec.template.spec.containers") {
            [one] => one,
            other => panic!(
                "the StatefulSet should run one container, not {}",
                other.len()
            ),
        }
    }

    /// The container's ports: name -> (containerPort, protocol).
    fn container_ports(&self) -> BTreeMap<String, (u16, String)> {
        get_seq(self.container(), "ports")
            .iter()
            .map(|p| {
                let name = get_str(p, "name", "containerPort").to_string();
                let number = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or_else(|| panic!("containerPort {name}: not a port number"));
                let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                (name, (number, protocol.to_string()))
            })
            .collect()
    }

    /// A port reference (a name or a number) resolved to a containerPort number.
    fn resolve_port(&self, reference: &Value, origin: &str) -> u16 {
        match reference {
            Value::String(name) => self
                .container_ports()
                .get(name)
                .map(|(n, _)| *n)
                .unwrap_or_else(|| panic!("{origin}: no containerPort named {name}")),
            other => other
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| panic!("{origin}: {other:?} is not a port")),
        }
    }

    fn config_str(&self, path: &str) -> &str {
        get_str(&self.config, path, &self.config_file)
    }

    fn shards(&self) -> u64 {
        get(&self.config, "server.shards")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| {
                panic!(
                    "{}: server.shards must be set: the pod's CPU request follows it, and the default (every core) is the node's, not the pod's",
                    self.config_file
                )
            })
    }

    /// What the config binds: port name -> (port, protocol), named as the containerPorts are.
    fn served_ports(&self) -> BTreeMap<String, (u16, String)> {
        let tcp = |port: u16| (port, "TCP".to_string());
        let listen = port_of(self.config_str("server.listen"), &self.config_file);
        let mut served = BTreeMap::new();
        served.insert("binary".to_string(), tcp(listen));
        for shard in 0..self.shards() {
            let port = u64::from(listen) + 1 + shard;
            let port = u16::try_from(port).expect("shard port fits in u16");
            served.insert(format!("shard-{shard}"), tcp(port));
        }
        let grpc = self.config_str("server.grpc");
        if grpc != "off" {
            served.insert("grpc".into(), tcp(port_of(grpc, &self.config_file)));
        }
        if let Some(admin) = get(&self.config, "server.admin").and_then(Value::as_str) {
            served.insert("admin".into(), tcp(port_of(admin, &self.config_file)));
        }
        let gossip = port_of(self.config_str("cluster.gossip"), &self.config_file);
        served.insert("gossip".into(), (gossip, "UDP".into()));
        served
    }

    fn pod_labels(&self) -> &Value {
        get(self.statefulset(), "spec.template.metadata.labels").expect("pod template labels")
    }

    /// The volume a container mount path comes from.
    fn volume_for_mount(&self, mount_path: &str) -> (&Value, &Value) {
        let mount = get_seq(self.container(), "volumeMounts")
            .iter()
            .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(mount_path))
            .unwrap_or_else(|| panic!("no volumeMount at {mount_path}"));
        let name = get_str(mount, "name", "volumeMount");
        let volume = get_seq(self.statefulset(), "spec.template.spec.volumes")
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("volumeMount {mount_path}: no volume named {name}"));
        (mount, volume)
    }
}

/// The Dockerfile's two stages: (build, runtime).
fn dockerfile() -> (files::Stage, files::Stage) {
    let mut stages = files::dockerfile_stages(&read("Dockerfile"));
    assert_eq!(
        stages.len(),
        2,
        "Dockerfile: a build stage and a runtime stage"
    );
    let runtime = stages.pop().unwrap();
    let build = stages.pop().unwrap();
    (build, runtime)
}

/// `server.drain_timeout` of a config; the deployment configs set it, since the stop
/// timeouts around them are sized from it.
fn drain_timeout(config: &Value, origin: &str) -> Duration {
    let text = get(config, "server.drain_timeout")
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            panic!("{origin}: set server.drain_timeout, the stop timeouts are sized from it")
        });
    duration(text, origin)
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let yaml: Vec<String> = files::files_under("deploy")
        .into_iter()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    assert!(
        yaml.len() >= 5,
        "expected the manifests under deploy/, found {yaml:?}"
    );
    for file in &yaml {
        assert!(
            !files::yaml_documents(file).is_empty(),
            "{file}: no YAML document"
        );
    }
    for (file, object) in Kubernetes::load().objects {
        for key in ["apiVersion", "kind", "metadata.name"] {
            get_str(&object, key, &file);
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_and_generates_config_and_secret() {
    let k8s = Kubernetes::load();
    let listed: BTreeSet<String> = get_seq(&k8s.kustomization, "resources")
        .iter()
        .map(|r| format!("{KUBERNETES}/{}", r.as_str().unwrap()))
        .collect();
    let generated: BTreeSet<String> = ["configMapGenerator", "secretGenerator"]
        .iter()
        .flat_map(|kind| get_seq(&k8s.kustomization, kind))
        .flat_map(|g| get_seq(g, "files"))
        .map(|f| format!("{KUBERNETES}/{}", f.as_str().unwrap()))
        .collect();
    let on_disk: BTreeSet<String> = files::files_under(KUBERNETES)
        .into_iter()
        .filter(|f| f.ends_with(".yaml") && f != KUSTOMIZATION)
        .filter(|f| !generated.contains(f))
        .collect();
    assert_eq!(
        listed, on_disk,
        "{KUSTOMIZATION}: resources must list every manifest"
    );
    for kind in ["StatefulSet", "Service", "PodDisruptionBudget"] {
        assert!(
            !k8s.objects_of_kind(kind).is_empty(),
            "no {kind} in {KUBERNETES}"
        );
    }

    // The gossip key: generated from a file the operator creates, which git and the image
    // build context never see.
    let secret = Kubernetes::generator(&k8s.kustomization, "secretGenerator", "tollgate-gossip");
    let key_files: Vec<&str> = get_seq(secret, "files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        key_files,
        ["gossip.key"],
        "{KUSTOMIZATION}: the secret's file"
    );
    assert!(
        read("deploy/kubernetes/.gitignore")
            .lines()
            .any(|l| l.trim() == "gossip.key"),
        "deploy/kubernetes/.gitignore must ignore gossip.key"
    );
    assert!(
        read(".dockerignore")
            .lines()
            .any(|l| l.trim() == "deploy/kubernetes/gossip.key"),
        ".dockerignore must keep deploy/kubernetes/gossip.key out of the build context"
    );
    assert_eq!(
        get(secret, "options.disableNameSuffixHash").and_then(Value::as_bool),
        Some(true),
        "{KUSTOMIZATION}: a new gossip key must not roll pods one by one (old and new keys cannot talk)"
    );
}

#[test]
fn configs_pass_tollgate_validate() {
    let k8s = Kubernetes::load();
    for file in [
        k8s.config_file.as_str(),
        UNIT_CONFIG,
        "server/default-policy.yaml",
    ] {
        cli::assert_valid(&files::root().join(file));
    }
}

#[test]
fn container_ports_are_the_ports_the_config_binds() {
    let k8s = Kubernetes::load();
    let served = k8s.served_ports();
    let declared = k8s.container_ports();
    assert_eq!(
        declared, served,
        "StatefulSet containerPorts (left) must be exactly what {} binds (right): \
         binary = server.listen, shard-N = listen + 1 + N for N < server.shards, grpc = server.grpc, gossip = cluster.gossip (UDP)",
        k8s.config_file
    );
}

#[test]
fn services_expose_the_container_ports_and_the_seed_is_the_headless_service() {
    let k8s = Kubernetes::load();
    let declared = k8s.container_ports();
    let statefulset = k8s.statefulset();
    let headless_name = get_str(statefulset, "spec.serviceName", "StatefulSet");
    for service in k8s.objects_of_kind("Service") {
        let name = get_str(service, "metadata.name", "Service");
        assert_eq!(
            service.get("spec").and_then(|s| s.get("selector")),
            Some(k8s.pod_labels()),
            "Service {name}: selector must be the pod labels"
        );
        for port in get_seq(service, "spec.ports") {
            let port_name = get_str(port, "name", name);
            let target = port
                .get("targetPort")
                .unwrap_or_else(|| port.get("port").unwrap());
            let origin = format!("Service {name} port {port_name}");
            let target = k8s.resolve_port(target, &origin);
            let number = port.get("port").and_then(Value::as_u64).unwrap();
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            let (container, container_protocol) = declared
                .get(port_name)
                .unwrap_or_else(|| panic!("{origin}: no containerPort of that name"));
            assert_eq!(
                (target, number),
                (*container, u64::from(*container)),
                "{origin}"
            );
            assert_eq!(protocol, container_protocol, "{origin}: protocol");
        }
    }

    let headless = k8s.service(headless_name);
    assert_eq!(
        get(headless, "spec.clusterIP").and_then(Value::as_str),
        Some("None")
    );
    assert_eq!(
        get(headless, "spec.publishNotReadyAddresses").and_then(Value::as_bool),
        Some(true),
        "starting pods must find each other before they are ready"
    );
    let gossip_port = declared["gossip"].0;
    assert!(
        get_seq(headless, "spec.ports")
            .iter()
            .any(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(gossip_port))),
        "the headless Service must carry the gossip port"
    );
    let seeds: Vec<&str> = get_seq(&k8s.config, "cluster.seeds")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        seeds,
        [format!("{headless_name}:{gossip_port}")],
        "{}: the seed is the headless Service at the gossip port",
        k8s.config_file
    );

    // Clients reach every port the binary protocol and gRPC serve.
    let client = k8s.service("tollgate");
    let exposed: BTreeSet<&str> = get_seq(client, "spec.ports")
        .iter()
        .map(|p| get_str(p, "name", "Service tollgate"))
        .collect();
    let wanted: BTreeSet<&str> = declared
        .keys()
        .map(String::as_str)
        .filter(|n| *n == "binary" || *n == "grpc" || n.starts_with("shard-"))
        .collect();
    assert_eq!(exposed, wanted, "Service tollgate: the client ports");

    let budget = k8s.one_of_kind("PodDisruptionBudget");
    assert_eq!(
        get(budget, "spec.selector.matchLabels"),
        Some(k8s.pod_labels()),
        "PodDisruptionBudget selector must be the pod labels"
    );
}

#[test]
fn probes_target_what_the_binary_serves() {
    let k8s = Kubernetes::load();
    let served = k8s.served_ports();
    let serve_help = cli::help(&["serve"]);
    for (probe, http_path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let spec = k8s
            .container()
            .get(probe)
            .unwrap_or_else(|| panic!("the container has no {probe}"));
        if let Some(tcp) = spec.get("tcpSocket") {
            let port = k8s.resolve_port(tcp.get("port").expect("tcpSocket.port"), probe);
            let tcp_served: Vec<u16> = served
                .iter()
                .filter(|(name, (_, proto))| proto == "TCP" && name.as_str() != "admin")
                .map(|(_, (p, _))| *p)
                .collect();
            assert!(
                tcp_served.contains(&port),
                "{probe}: tcpSocket port {port} is not one the config binds ({tcp_served:?})"
            );
        } else if let Some(http) = spec.get("httpGet") {
            let path = get_str(http, "path", probe);
            assert_eq!(path, http_path, "{probe}: path");
            assert!(
                serve_help.contains(path),
                "{probe}: `tollgate serve --help` does not mention {path}, so the binary does not say it serves it"
            );
            let port = k8s.resolve_port(http.get("port").expect("httpGet.port"), probe);
            let admin = served.get("admin").unwrap_or_else(|| {
                panic!("{probe}: httpGet needs server.admin in {}", k8s.config_file)
            });
            assert_eq!(port, admin.0, "{probe}: httpGet must target the admin port");
        } else {
            panic!("{probe}: expected tcpSocket or httpGet, found {spec:?}");
        }
    }
}

#[test]
fn statefulset_runs_serve_on_the_mounted_config_and_secret() {
    let k8s = Kubernetes::load();
    let container = k8s.container();
    assert!(
        container.get("command").is_none(),
        "use the image's ENTRYPOINT, the binary"
    );
    let args: Vec<String> = get_seq(container, "args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    let pairs = cli::check_command_line(&args, "StatefulSet args");
    let config_path = pairs
        .iter()
        .find(|(flag, _)| flag == "--config" || flag == "-c")
        .map(|(_, v)| v.as_str())
        .expect("StatefulSet args: --config");

    // --config is the ConfigMap's file, mounted where args say.
    let (mount, volume) = k8s.volume_for_mount(config_path);
    assert_eq!(
        get_str(volume, "configMap.name", "config volume"),
        "tollgate"
    );
    let generated = Kubernetes::config_generator_file(&k8s.kustomization);
    assert_eq!(
        mount.get("subPath").and_then(Value::as_str),
        Some(generated.as_str()),
        "the config mount's subPath is the generated ConfigMap's key"
    );

    // cluster.secret_file is the Secret's key, in the directory the Secret is mounted at.
    let secret_file = k8s.config_str("cluster.secret_file");
    let (dir, key) = secret_file.rsplit_once('/').expect("secret_file is a path");
    let (_, volume) = k8s.volume_for_mount(dir);
    assert_eq!(
        get_str(volume, "secret.secretName", "gossip volume"),
        "tollgate-gossip"
    );
    let secret = Kubernetes::generator(&k8s.kustomization, "secretGenerator", "tollgate-gossip");
    assert!(
        get_seq(secret, "files")
            .iter()
            .any(|f| f.as_str() == Some(key)),
        "{}: cluster.secret_file names key {key}, which the tollgate-gossip Secret does not hold",
        k8s.config_file
    );

    // Stopping: SIGTERM, then drain_timeout, then the last deltas and the leave.
    let grace = get(
        k8s.statefulset(),
        "spec.template.spec.terminationGracePeriodSeconds",
    )
    .and_then(Value::as_u64)
    .expect("terminationGracePeriodSeconds");
    let drain = drain_timeout(&k8s.config, &k8s.config_file);
    assert!(
        Duration::from_secs(grace) >= drain + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace} must leave drain_timeout {drain:?} plus 5s"
    );
}

#[test]
fn pods_request_one_cpu_per_shard_with_guaranteed_resources() {
    let k8s = Kubernetes::load();
    let resources = k8s.container().get("resources").expect("resources");
    let requests = resources.get("requests").expect("resources.requests");
    let limits = resources.get("limits").expect("resources.limits");
    let cpu = match requests.get("cpu") {
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(other) => other.as_u64(),
        None => None,
    };
    assert_eq!(
        cpu,
        Some(k8s.shards()),
        "requests.cpu must be a whole number of CPUs equal to server.shards in {}",
        k8s.config_file
    );
    assert_eq!(
        requests, limits,
        "requests = limits (Guaranteed QoS: whole cores of its own under the static CPU manager)"
    );
    assert!(requests.get("memory").is_some(), "requests.memory");
}

#[test]
fn pods_run_the_image_version_as_its_non_root_user() {
    let k8s = Kubernetes::load();
    let image = get_str(k8s.container(), "image", "StatefulSet container");
    assert_eq!(
        image,
        format!("tollgate:{}", cli::version()),
        "the image tag is `tollgate --version`"
    );

    let (_, runtime) = dockerfile();
    let user = runtime.one("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let pod =
        get(k8s.statefulset(), "spec.template.spec.securityContext").expect("pod securityContext");
    assert_eq!(pod.get("runAsNonRoot").and_then(Value::as_bool), Some(true));
    assert_eq!(
        pod.get("runAsUser")
            .and_then(Value::as_u64)
            .map(|u| u.to_string())
            .as_deref(),
        Some(uid)
    );
    assert_eq!(
        pod.get("runAsGroup")
            .and_then(Value::as_u64)
            .map(|g| g.to_string())
            .as_deref(),
        Some(gid)
    );
    assert_eq!(
        get(pod, "seccompProfile.type").and_then(Value::as_str),
        Some("Unconfined"),
        "io_uring is blocked by the runtimes' default seccomp profiles (docs/deploy.md)"
    );
}

#[test]
fn dockerfile_builds_with_the_readme_command_on_the_pinned_toolchain() {
    let readme = read("README.md");
    let readme_build: Vec<String> = files::fences(&readme)
        .into_iter()
        .filter(|f| f.info.split_whitespace().next() == Some("sh"))
        .flat_map(|f| f.body.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with("cargo build"))
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .collect();
    let [readme_build] = readme_build.as_slice() else {
        panic!("README.md: expected one `cargo build` line in a sh block, found {readme_build:?}");
    };

    let (build, runtime) = dockerfile();
    assert_eq!(
        build.name.as_deref(),
        Some("build"),
        "Dockerfile: first stage `AS build`"
    );
    let cargo_runs: Vec<&str> = build
        .all("RUN")
        .into_iter()
        .filter(|r| r.contains("cargo"))
        .collect();
    assert_eq!(
        cargo_runs,
        [readme_build.as_str()],
        "Dockerfile: the build stage runs the README's build command"
    );

    // rust:X.Y.Z-CODENAME, no older than the workspace's rust-version; the runtime stage is
    // Debian CODENAME-slim, so the binary's glibc is there.
    let tag = build
        .image
        .rsplit_once("/rust:")
        .or_else(|| build.image.split_once("rust:"))
        .map(|(_, tag)| tag)
        .unwrap_or_else(|| panic!("Dockerfile: build stage FROM {} is not rust:", build.image));
    let (version, codename) = tag.split_once('-').expect("rust:VERSION-CODENAME");
    let cargo_toml = read("Cargo.toml");
    let floor = cargo_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("Cargo.toml: rust-version");
    let numbers = |v: &str| -> Vec<u32> {
        v.split('.')
            .map(|n| n.parse().expect("version number"))
            .collect()
    };
    assert_eq!(
        numbers(version).len(),
        3,
        "Dockerfile: pin the full toolchain version, not {version}"
    );
    assert!(
        numbers(version) >= numbers(floor),
        "Dockerfile: rust {version} is older than the workspace's rust-version {floor}"
    );
    assert!(
        runtime.image.ends_with(&format!("debian:{codename}-slim")),
        "Dockerfile: runtime FROM {} should be debian:{codename}-slim, as the build stage",
        runtime.image
    );
}

#[test]
fn dockerfile_ships_only_the_binary_and_default_policy_as_non_root() {
    let (build, runtime) = dockerfile();
    let workdir = build.one("WORKDIR");
    assert!(runtime.all("ADD").is_empty(), "Dockerfile: COPY, not ADD");
    let copies = runtime.all("COPY");
    let [binary_copy, policy_copy] = copies.as_slice() else {
        panic!(
            "Dockerfile: the runtime stage copies the binary and the policy only, found {copies:?}"
        );
    };
    let binary_source = format!("--from=build {workdir}/target/release/tollgate ");
    let binary = binary_copy.strip_prefix(&binary_source).unwrap_or_else(|| {
        panic!("Dockerfile: expected COPY {binary_source}DEST, found {binary_copy}")
    });
    let policy = policy_copy
        .strip_prefix("server/default-policy.yaml ")
        .unwrap_or_else(|| {
            panic!("Dockerfile: expected COPY server/default-policy.yaml DEST, found {policy_copy}")
        });

    let user = runtime.one("USER");
    for id in user.split(':') {
        let id: u32 = id.parse().unwrap_or_else(|_| {
            panic!("Dockerfile: USER {user} must be numeric (runAsNonRoot can only check a number)")
        });
        assert_ne!(id, 0, "Dockerfile: USER must not be root");
    }

    assert_eq!(
        files::exec_form(runtime.one("ENTRYPOINT"), "ENTRYPOINT"),
        [binary]
    );
    let cmd = files::exec_form(runtime.one("CMD"), "CMD");
    let pairs = cli::check_command_line(&cmd, "Dockerfile CMD");
    let value = |flag: &str| {
        pairs
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("Dockerfile CMD: {flag}"))
    };
    assert_eq!(
        value("--config"),
        policy,
        "Dockerfile CMD serves the copied policy"
    );
    let served: BTreeSet<String> = [value("--listen"), value("--grpc")]
        .iter()
        .map(|a| port_of(a, "Dockerfile CMD").to_string())
        .collect();
    let exposed: BTreeSet<String> = runtime
        .one("EXPOSE")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(exposed, served, "Dockerfile: EXPOSE is what CMD serves");
}

#[test]
fn systemd_unit_validates_then_serves_with_known_flags() {
    let text = read(UNIT);
    let service = files::unit_section(&text, "Service");
    let split =
        |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_string).collect() };
    let pre = split(files::unit_value(&service, "ExecStartPre"));
    let start = split(files::unit_value(&service, "ExecStart"));
    assert_eq!(
        pre[0], start[0],
        "{UNIT}: both commands run the same binary"
    );
    let validate = cli::check_command_line(&pre[1..], "ExecStartPre");
    let serve = cli::check_command_line(&start[1..], "ExecStart");
    assert_eq!(pre[1], "validate", "{UNIT}: ExecStartPre checks the config");
    assert_eq!(start[1], "serve", "{UNIT}: ExecStart serves");
    let config = serve
        .iter()
        .find(|(flag, _)| flag == "--config")
        .map(|(_, v)| v.clone())
        .expect("ExecStart: --config");
    assert_eq!(
        validate,
        [(String::new(), config.clone())],
        "{UNIT}: validate the file serve reads"
    );
    assert_eq!(
        config, "/etc/tollgate/tollgate.yaml",
        "{UNIT_CONFIG} is installed there"
    );

    // The example config's secret is the credential the unit loads.
    let (name, _) = files::unit_value(&service, "LoadCredential")
        .split_once(':')
        .expect("LoadCredential=NAME:PATH");
    let example = files::yaml_documents(UNIT_CONFIG).remove(0);
    let unit_name = UNIT.rsplit('/').next().unwrap();
    assert_eq!(
        get_str(&example, "cluster.secret_file", UNIT_CONFIG),
        format!("/run/credentials/{unit_name}/{name}")
    );

    // Stopping: the signal serve handles, and time for the drain.
    let signal = files::unit_value(&service, "KillSignal");
    assert!(
        cli::help(&["serve"]).contains(signal.trim_start_matches("SIG")),
        "{UNIT}: KillSignal={signal} is not a signal `serve --help` says it stops on"
    );
    let stop = duration(
        &format!("{}s", files::unit_value(&service, "TimeoutStopSec")),
        UNIT,
    );
    let drain = drain_timeout(&example, UNIT_CONFIG);
    assert!(
        stop >= drain + Duration::from_secs(5),
        "{UNIT}: TimeoutStopSec must leave drain_timeout plus 5s"
    );

    let memlock = files::unit_value(&service, "LimitMEMLOCK");
    assert!(
        memlock == "infinity"
            || memlock
                .parse::<u64>()
                .is_ok_and(|b| b >= GLOMMIO_MIN_MEMLOCK),
        "{UNIT}: LimitMEMLOCK={memlock}: glommio needs at least {GLOMMIO_MIN_MEMLOCK} bytes"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Ok(found) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    assert!(found.status.success(), "systemd-analyze --version failed");
    // The unit as installed, with the binary under test where the unit expects /usr/local/bin.
    let dir = common::temp_dir("unit");
    let unit = dir.join("tollgate.service");
    std::fs::write(
        &unit,
        read(UNIT).replace("/usr/local/bin/tollgate", cli::bin()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{stderr}"
    );
}

#[test]
fn deploy_md_links_every_file_and_quotes_none_stale() {
    let doc = read("docs/deploy.md");
    let mut shipped: Vec<String> = files::files_under("deploy")
        .into_iter()
        .filter(|f| !f.ends_with(".gitignore") && !f.ends_with("gossip.key"))
        .collect();
    shipped.push("Dockerfile".into());
    for file in &shipped {
        assert!(
            doc.contains(&format!("](../{file})")),
            "docs/deploy.md must link ../{file}"
        );
    }
    // A manifest or unit shown in the doc must be one of the files, byte for byte: the doc
    // links the files rather than keeping copies that drift.
    let contents: Vec<String> = shipped.iter().map(|f| read(f)).collect();
    for fence in files::fences(&doc) {
        let looks_shipped = fence.body.contains("apiVersion:")
            || fence.body.contains("[Service]")
            || fence.body.lines().any(|l| l.starts_with("FROM "));
        if looks_shipped {
            assert!(
                contents.contains(&fence.body),
                "docs/deploy.md quotes a manifest that is not a file under deploy/ verbatim; link the file instead:\n{}",
                fence.body
            );
        }
    }
}

#[test]
fn shards_pin_inside_the_cpus_the_process_is_given() {
    // A container's cpuset (Kubernetes' static CPU manager) or `taskset` gives the process
    // some CPUs, not necessarily CPU 0 onwards: shards must pin inside that set.
    let allowed = this_thread_cpus();
    let Some(&cpu) = allowed.iter().rev().find(|&&c| c != 0) else {
        eprintln!(
            "skipped: this process may only run on CPU 0 ({allowed:?}), so no set without it"
        );
        return;
    };
    set_this_thread_cpus(&[cpu]);
    // The child inherits the spawning thread's affinity.
    let server = common::start_server_with_args(
        "server: { listen: 127.0.0.1:0, grpc: off }\npolicies: []\n",
        &["--shards", "1"],
    );
    set_this_thread_cpus(&allowed);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    let mut shard_threads = 0;
    for task in tasks {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !name.starts_with("shard-") {
            continue;
        }
        shard_threads += 1;
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            cpus,
            cpu.to_string(),
            "thread {} runs on CPUs {cpus}, outside the set given ({cpu})",
            name.trim()
        );
    }
    assert!(shard_threads > 0, "no shard thread found");
}

fn this_thread_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    // SAFETY: every index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn set_this_thread_cpus(cpus: &[usize]) {
    // SAFETY: as above; sched_setaffinity(0) changes only the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(rc, 0, "sched_setaffinity {cpus:?}");
}

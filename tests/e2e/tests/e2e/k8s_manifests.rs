//! The Kubernetes manifests, checked offline: every overlay builds with
//! `kubectl kustomize`; every configuration key they set exists in the
//! config structs; ports and probe services match what the binaries serve;
//! every server binary has a Deployment; pods run locked down. (Schema
//! validation of the same output runs in scripts/test.sh with
//! kubernetes-validate.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use feed_server::FeedConfig;
use serde::Deserialize;
use serde_yaml::Value;

const OVERLAYS: &[&str] = &["dev", "prod", "all-in-one"];

/// Every long-running binary the workspace builds (feedctl is a client).
const BINARIES: &[&str] = &[
    "follow-graph",
    "publish",
    "fanout-worker",
    "timeline",
    "notify",
    "feedd",
];

/// The health service name each binary reports once ready.
fn readiness_service(binary: &str) -> &'static str {
    match binary {
        "follow-graph" => follow_graph::SERVICE_NAME,
        "publish" => publish::SERVICE_NAME,
        "fanout-worker" => publish::FANOUT_WORKER_HEALTH,
        "timeline" => timeline::SERVICE_NAME,
        "notify" => notify::SERVICE_NAME,
        // feedd serves them all: the whole-server status.
        "feedd" => "",
        other => panic!("unknown binary {other}"),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build(overlay: &str) -> Vec<Value> {
    let dir = repo().join("k8s/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl must be installed (scripts/test.sh checks for it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("yaml document"))
        .collect()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

fn list<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .as_sequence()
        .map(|x| x.iter().collect())
        .unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| s(d, &["kind"]) == kind).collect()
}

fn name(d: &Value) -> &str {
    s(d, &["metadata", "name"])
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("address with a port")
}

/// Every environment variable the overlay's feed containers get, with the
/// value where the manifests hold it (secret-backed ones get a placeholder).
fn env_of(docs: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in list(container, &["envFrom"]) {
        let cm = s(from, &["configMapRef", "name"]);
        let map = of_kind(docs, "ConfigMap")
            .into_iter()
            .find(|c| name(c) == cm)
            .unwrap_or_else(|| panic!("envFrom names a ConfigMap {cm} the overlay lacks"));
        for (k, v) in at(map, &["data"]).as_mapping().into_iter().flatten() {
            env.insert(k.as_str().unwrap_or("").to_owned(), v.as_str().unwrap_or("").to_owned());
        }
    }
    for e in list(container, &["env"]) {
        let value = match at(e, &["valueFrom", "secretKeyRef", "name"]).as_str() {
            Some(_) => "secret-value".to_owned(),
            None => s(e, &["value"]).to_owned(),
        };
        env.insert(s(e, &["name"]).to_owned(), value);
    }
    env
}

// figment's Jail API returns its large error type; that is its signature, not ours.
#[allow(clippy::result_large_err)]
/// Loads the configuration a container would: its mounted config.toml and
/// its FEED__ variables, through the same loader as the binaries, which
/// refuses unknown keys.
fn load_config(docs: &[Value], deployment: &Value, container: &Value) -> FeedConfig {
    let volume = list(deployment, &["spec", "template", "spec", "volumes"])
        .into_iter()
        .find(|v| s(v, &["name"]) == "config")
        .expect("a config volume");
    let cm_name = s(volume, &["configMap", "name"]);
    let cm = of_kind(docs, "ConfigMap")
        .into_iter()
        .find(|c| name(c) == cm_name)
        .unwrap_or_else(|| panic!("config volume names a ConfigMap {cm_name} the overlay lacks"));
    let toml = s(cm, &["data", "config.toml"]).to_owned();
    let env = env_of(docs, container);
    assert_eq!(
        env.get("FEED_CONFIG").map(String::as_str),
        Some("/etc/feed/config.toml"),
        "{}: FEED_CONFIG points at the mounted file",
        name(deployment)
    );
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.create_file("config.toml", &toml)?;
        for (k, v) in &env {
            if k.starts_with("FEED__") {
                jail.set_env(k, v);
            }
        }
        let cfg = FeedConfig::load(Some(Path::new("config.toml"))).map_err(|e| e.to_string())?;
        loaded = Some(cfg);
        Ok(())
    });
    loaded.expect("config loaded")
}

fn feed_containers(d: &Value) -> Vec<&Value> {
    let spec = at(d, &["spec", "template", "spec"]);
    list(spec, &["initContainers"])
        .into_iter()
        .chain(list(spec, &["containers"]))
        .filter(|c| {
            at(c, &["command"])
                .as_sequence()
                .and_then(|cmd| cmd.first())
                .and_then(Value::as_str)
                .is_some_and(|c| c.starts_with("/usr/local/bin/"))
        })
        .collect()
}

fn binary_of(container: &Value) -> String {
    let cmd = at(container, &["command"]).as_sequence().expect("command");
    cmd[0]
        .as_str()
        .and_then(|c| c.strip_prefix("/usr/local/bin/"))
        .expect("binary path")
        .to_owned()
}

fn assert_locked_down(what: &str, pod: &Value, container: &Value) {
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true),
        "{what}: runAsNonRoot"
    );
    let sc = at(container, &["securityContext"]);
    assert_eq!(
        at(sc, &["allowPrivilegeEscalation"]).as_bool(),
        Some(false),
        "{what}: no privilege escalation"
    );
    assert_eq!(
        at(sc, &["readOnlyRootFilesystem"]).as_bool(),
        Some(true),
        "{what}: read-only root filesystem"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                !at(container, &["resources", kind, res]).is_null(),
                "{what}: resources.{kind}.{res}"
            );
        }
    }
}

fn probe_of<'a>(container: &'a Value, probe: &str) -> (u64, &'a str) {
    let grpc = at(container, &[probe, "grpc"]);
    assert!(!grpc.is_null(), "{probe} is a native gRPC probe");
    (at(grpc, &["port"]).as_u64().expect("probe port"), s(grpc, &["service"]))
}

fn container_port(container: &Value, port_name: &str) -> Option<u64> {
    list(container, &["ports"])
        .into_iter()
        .find(|p| s(p, &["name"]) == port_name)
        .and_then(|p| at(p, &["containerPort"]).as_u64())
}

#[test]
fn every_overlay_builds_and_its_deployments_match_what_the_binaries_serve() {
    let mut deployed: BTreeSet<String> = BTreeSet::new();
    for overlay in OVERLAYS {
        let docs = build(overlay);
        let services = of_kind(&docs, "Service");
        for d in of_kind(&docs, "Deployment") {
            if s(d, &["metadata", "labels", "app.kubernetes.io/part-of"]) != "feed" {
                continue; // the dev overlay's Redis
            }
            let pod = at(d, &["spec", "template", "spec"]);
            for c in feed_containers(d) {
                let binary = binary_of(c);
                let what = format!("{overlay}/{}/{binary}", name(d));
                assert!(BINARIES.contains(&binary.as_str()), "{what}: unknown binary");
                deployed.insert(binary.clone());
                assert_locked_down(&what, pod, c);
                let cfg = load_config(&docs, d, c);
                let grpc = port_of(&cfg.server.listen);
                let metrics = port_of(&cfg.server.admin_listen);
                assert_eq!(
                    container_port(c, "grpc"),
                    Some(grpc),
                    "{what}: grpc port = server.listen"
                );
                assert_eq!(
                    container_port(c, "metrics"),
                    Some(metrics),
                    "{what}: metrics port = server.admin_listen"
                );
                assert_eq!(
                    probe_of(c, "readinessProbe"),
                    (grpc, readiness_service(&binary)),
                    "{what}: readiness asks for the service the binary reports"
                );
                assert_eq!(
                    probe_of(c, "livenessProbe"),
                    (grpc, feed_server::serve::LIVENESS),
                    "{what}: liveness"
                );
                let grace_ms = at(pod, &["terminationGracePeriodSeconds"]).as_u64().expect("grace") * 1000;
                assert!(
                    grace_ms > cfg.server.drain_delay_ms + cfg.server.drain_timeout_ms,
                    "{what}: the grace period outlasts the drain"
                );
                // Internal clients reach other services through headless Services of this overlay.
                for url in [&cfg.clients.follow_graph_url, &cfg.clients.publish_url] {
                    if url.is_empty() {
                        continue;
                    }
                    let host = url.trim_start_matches("http://").split(':').next().expect("host");
                    let svc = services
                        .iter()
                        .find(|x| name(x) == host)
                        .unwrap_or_else(|| panic!("{what}: {url} names no Service"));
                    assert_eq!(s(svc, &["spec", "clusterIP"]), "None", "{what}: {host} is headless");
                }
                if *overlay == "prod" {
                    assert!(
                        !cfg.redis.url.is_empty() && !cfg.scylla.nodes.is_empty(),
                        "{what}: external stores"
                    );
                }
            }
            // A Service exposes each server's ports by name.
            let app = s(d, &["spec", "selector", "matchLabels", "app.kubernetes.io/name"]);
            let svc = services
                .iter()
                .find(|x| s(x, &["spec", "selector", "app.kubernetes.io/name"]) == app)
                .unwrap_or_else(|| panic!("{overlay}: no Service for {app}"));
            assert!(
                list(svc, &["spec", "ports"])
                    .iter()
                    .any(|p| s(p, &["targetPort"]) == "metrics"),
                "{overlay}/{app}: metrics port served"
            );
        }
        // Secrets are referenced by name; prod's is never in the repository.
        let secrets: Vec<&str> = of_kind(&docs, "Secret").into_iter().map(name).collect();
        if *overlay == "prod" {
            assert!(secrets.is_empty(), "prod commits no Secret");
        } else {
            assert!(
                secrets.iter().any(|n| n.starts_with("feed-tokens")),
                "{overlay}: tokens"
            );
        }
    }
    let all: BTreeSet<String> = BINARIES.iter().map(|b| b.to_string()).collect();
    assert_eq!(deployed, all, "every binary has a Deployment");
}

#[test]
fn the_platform_overlays_run_each_service_with_a_budget_an_autoscaler_and_the_migration_first() {
    for overlay in ["dev", "prod"] {
        let docs = build(overlay);
        let apps: Vec<&str> = of_kind(&docs, "Deployment")
            .into_iter()
            .filter(|d| s(d, &["metadata", "labels", "app.kubernetes.io/part-of"]) == "feed")
            .map(name)
            .collect();
        assert_eq!(apps.len(), 5, "{overlay}: {apps:?}");
        for app in &apps {
            assert!(
                of_kind(&docs, "PodDisruptionBudget").iter().any(|p| name(p) == *app),
                "{overlay}/{app}: PodDisruptionBudget"
            );
            let hpa = of_kind(&docs, "HorizontalPodAutoscaler")
                .into_iter()
                .find(|h| s(h, &["spec", "scaleTargetRef", "name"]) == *app)
                .unwrap_or_else(|| panic!("{overlay}/{app}: HorizontalPodAutoscaler"));
            if *app == "fanout-worker" {
                assert!(
                    list(hpa, &["spec", "metrics"])
                        .iter()
                        .any(|m| s(m, &["pods", "metric", "name"]) == "feed_fanout_stream_lag"),
                    "fanout workers scale on stream lag"
                );
            }
        }
        let job = of_kind(&docs, "Job")
            .into_iter()
            .find(|j| name(j) == "feed-migrate")
            .expect("migration Job");
        let migrated: BTreeSet<String> = feed_containers(job)
            .into_iter()
            .inspect(|c| {
                let cmd: Vec<&str> = list(c, &["command"]).iter().filter_map(|v| v.as_str()).collect();
                assert_eq!(cmd.get(1), Some(&"--migrate"));
            })
            .map(binary_of)
            .collect();
        let with_schema: BTreeSet<String> = ["follow-graph", "publish", "notify"].map(String::from).into();
        assert_eq!(migrated, with_schema, "{overlay}: every store's schema is migrated");
        assert!(
            !of_kind(&docs, "NetworkPolicy").is_empty(),
            "{overlay}: internal ports are fenced"
        );
        if overlay == "prod" {
            for p in of_kind(&docs, "PodDisruptionBudget") {
                assert_eq!(at(p, &["spec", "minAvailable"]).as_u64(), Some(2), "quorum of three");
            }
        }
    }
}

#[test]
fn the_image_carries_every_binary() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    for b in BINARIES {
        assert!(
            dockerfile.contains(&format!("target/release/{b}")),
            "the image copies {b}"
        );
    }
}

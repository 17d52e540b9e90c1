//! Where the tests find Postgres, Redis and the AWS emulator, in this order:
//!
//! 1. the service's URL variable (`SPLAI_TEST_POSTGRES_URL`, `SPLAI_TEST_REDIS_URL`,
//!    `SPLAI_TEST_AWS_ENDPOINT_URL`), as CI sets;
//! 2. where a Docker engine answers (a developer's laptop), a container started with
//!    testcontainers, one per service per machine: it is marked for reuse, so every test binary
//!    and later runs share it instead of starting their own (`docker ps --filter
//!    label=org.testcontainers.reuse.hash` lists it; `docker rm -f` removes it) — Postgres and
//!    Redis only;
//! 3. the service on its standard local port, as this project's machines run them (for AWS,
//!    4566: LocalStack's port, where `.ci/run` also starts `moto_server`);
//! 4. none: the test is skipped with a printed reason, and fails instead when `CI` is set, so a
//!    missing service is never silently green.
//!
//! Each test still isolates itself inside the service (its own database or key prefix).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// A service the tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// PostgreSQL (trust or password auth; tests create databases of their own).
    Postgres,
    /// Redis (tests use key prefixes or database numbers of their own).
    Redis,
    /// An AWS emulator serving SQS, DynamoDB and S3 on one endpoint (moto or LocalStack;
    /// tests use queue, table and bucket names of their own).
    Aws,
}

impl Service {
    /// The variable naming it.
    pub fn url_var(self) -> &'static str {
        match self {
            Self::Postgres => "SPLAI_TEST_POSTGRES_URL",
            Self::Redis => "SPLAI_TEST_REDIS_URL",
            Self::Aws => "SPLAI_TEST_AWS_ENDPOINT_URL",
        }
    }

    /// Where it listens on a machine that runs it locally.
    pub fn local_url(self) -> &'static str {
        match self {
            Self::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Self::Redis => "redis://127.0.0.1:6379",
            Self::Aws => "http://127.0.0.1:4566",
        }
    }

    /// `host:port` of a URL of this service (the port defaulting to the service's), as
    /// variables such as `SPLAI_REDIS_ADDR` want it.
    pub fn addr(self, url: &str) -> Option<String> {
        host_port(url, self.default_port())
    }

    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "Postgres",
            Self::Redis => "Redis",
            Self::Aws => "AWS emulator",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Redis => 6379,
            Self::Aws => 4566,
        }
    }
}

/// The URL of `service` for `test`, found in the order of the module docs, or `None` after
/// printing why the test is skipped.
///
/// # Panics
/// When no service is found and `CI` is set.
pub fn locate(service: Service, test: &str) -> Option<String> {
    let why = match find(service, &Env::process()) {
        Ok(url) => return Some(url),
        Err(why) => why,
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why} (CI is set, so this fails instead of skipping)"
    );
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// What [`find`] reads of the environment; a value so the order can be tested.
struct Env {
    url: fn(Service) -> Option<String>,
    docker: fn() -> bool,
    container: fn(Service) -> Result<String, String>,
    answers: fn(&str, u16) -> bool,
}

impl Env {
    fn process() -> Self {
        Env {
            url: |s| std::env::var(s.url_var()).ok().filter(|u| !u.is_empty()),
            docker: docker_engine_present,
            container: shared_container,
            answers: tcp_answers,
        }
    }
}

fn find(service: Service, env: &Env) -> Result<String, String> {
    let name = service.name();
    if let Some(url) = (env.url)(service) {
        return if (env.answers)(&url, service.default_port()) {
            Ok(url)
        } else {
            Err(format!(
                "{name} at {}={url} does not answer",
                service.url_var()
            ))
        };
    }
    let container = if (env.docker)() {
        match (env.container)(service) {
            Ok(url) => return Ok(url),
            Err(e) => format!("starting a {name} container failed: {e}"),
        }
    } else {
        "no Docker engine for a container".to_owned()
    };
    let local = service.local_url();
    if (env.answers)(local, service.default_port()) {
        return Ok(local.to_owned());
    }
    Err(format!(
        "no {name}: {} is not set, {container}, and nothing answers at {local}",
        service.url_var()
    ))
}

/// Whether a Docker engine may be reachable: `DOCKER_HOST` names one, or the default socket
/// exists. A socket without an engine behind it is caught when the container fails to start.
fn docker_engine_present() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// Whether something accepts TCP connections at the host and port of `url` within 2 s.
fn tcp_answers(url: &str, default_port: u16) -> bool {
    let Some(addr) = host_port(url, default_port) else {
        return false;
    };
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// `host:port` of a `scheme://[user[:password]@]host[:port][/path][?query]` URL.
fn host_port(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rfind(']') {
        // `[::1]:5432`: a port only after the bracket.
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    Some(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    })
}

/// The URL of this machine's reusable test container for `service`, started at most once per
/// process (the first caller waits for it; later ones get its answer).
fn shared_container(service: Service) -> Result<String, String> {
    static POSTGRES: OnceLock<Result<String, String>> = OnceLock::new();
    static REDIS: OnceLock<Result<String, String>> = OnceLock::new();
    let cell = match service {
        Service::Postgres => &POSTGRES,
        Service::Redis => &REDIS,
        Service::Aws => {
            return Err("no container is started for it (run `moto_server -p 4566`)".to_owned());
        }
    };
    cell.get_or_init(|| {
        // The blocking runner makes a runtime of its own, which cannot happen on a thread
        // already inside the test's runtime.
        std::thread::spawn(move || start_container(service))
            .join()
            .unwrap_or_else(|_| Err("the container thread panicked".to_owned()))
    })
    .clone()
}

fn start_container(service: Service) -> Result<String, String> {
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{ImageExt, ReuseDirective};
    use testcontainers_modules::{postgres::Postgres, redis::Redis};

    let err = |e: testcontainers_modules::testcontainers::TestcontainersError| e.to_string();
    // Marked for reuse, so dropping the handle leaves it running for the next test binary.
    match service {
        Service::Postgres => {
            let c = Postgres::default()
                .with_host_auth()
                .with_tag("17-alpine")
                .with_reuse(ReuseDirective::Always)
                .start()
                .map_err(err)?;
            let port = c.get_host_port_ipv4(5432).map_err(err)?;
            Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        }
        Service::Redis => {
            let c = Redis::default()
                .with_tag("7-alpine")
                .with_reuse(ReuseDirective::Always)
                .start()
                .map_err(err)?;
            let port = c.get_host_port_ipv4(6379).map_err(err)?;
            Ok(format!("redis://127.0.0.1:{port}"))
        }
        Service::Aws => unreachable!("shared_container answers for the AWS emulator"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        url: fn(Service) -> Option<String>,
        docker: fn() -> bool,
        container: fn(Service) -> Result<String, String>,
        answers: fn(&str, u16) -> bool,
    ) -> Env {
        Env {
            url,
            docker,
            container,
            answers,
        }
    }

    fn container_url(_: Service) -> Result<String, String> {
        Ok("redis://127.0.0.1:49153".to_owned())
    }

    #[test]
    fn the_url_variable_comes_first() {
        let e = env(
            |_| Some("redis://r:1".into()),
            || true,
            container_url,
            |_, _| true,
        );
        assert_eq!(find(Service::Redis, &e).as_deref(), Ok("redis://r:1"));
    }

    #[test]
    fn a_named_service_that_does_not_answer_is_not_replaced() {
        let e = env(
            |_| Some("redis://r:1".into()),
            || true,
            container_url,
            |_, _| false,
        );
        let why = find(Service::Redis, &e).expect_err("no fallback past a named URL");
        assert!(why.contains("SPLAI_TEST_REDIS_URL=redis://r:1"), "{why}");
    }

    #[test]
    fn a_container_comes_before_the_local_port_where_docker_runs() {
        let e = env(|_| None, || true, container_url, |_, _| true);
        assert_eq!(
            find(Service::Redis, &e).as_deref(),
            Ok("redis://127.0.0.1:49153")
        );
    }

    #[test]
    fn without_docker_the_local_port_is_tried() {
        let e = env(|_| None, || false, container_url, |_, _| true);
        assert_eq!(
            find(Service::Postgres, &e).as_deref(),
            Ok("postgres://postgres@127.0.0.1:5432/test")
        );
    }

    #[test]
    fn a_failed_container_falls_back_to_the_local_port() {
        let e = env(
            |_| None,
            || true,
            |_| Err("engine gone".into()),
            |_, _| true,
        );
        assert!(find(Service::Redis, &e).is_ok());
    }

    #[test]
    fn nothing_found_says_every_reason() {
        let e = env(
            |_| None,
            || true,
            |_| Err("engine gone".into()),
            |_, _| false,
        );
        let why = find(Service::Postgres, &e).expect_err("nothing");
        assert!(why.contains("SPLAI_TEST_POSTGRES_URL is not set"), "{why}");
        assert!(why.contains("engine gone"), "{why}");
        assert!(why.contains("127.0.0.1:5432"), "{why}");
        let e = env(|_| None, || false, container_url, |_, _| false);
        let why = find(Service::Postgres, &e).expect_err("nothing");
        assert!(why.contains("no Docker engine"), "{why}");
    }

    #[test]
    fn host_and_port_come_from_the_url() {
        assert_eq!(
            host_port("postgres://u:p@db.local:6543/x?sslmode=disable", 5432).as_deref(),
            Some("db.local:6543")
        );
        assert_eq!(
            host_port("postgres://u@h/x", 5432).as_deref(),
            Some("h:5432")
        );
        assert_eq!(
            host_port("redis://:secret@127.0.0.1", 6379).as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            host_port("redis://[::1]:7000/2", 6379).as_deref(),
            Some("[::1]:7000")
        );
        assert_eq!(
            host_port("redis://[::1]", 6379).as_deref(),
            Some("[::1]:6379")
        );
        assert_eq!(host_port("redis://", 6379), None);
    }

    #[test]
    fn a_closed_port_does_not_answer() {
        // Bound then dropped: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        assert!(!tcp_answers(&format!("redis://127.0.0.1:{port}"), 6379));
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = open.local_addr().expect("addr").port();
        assert!(tcp_answers(&format!("redis://127.0.0.1:{port}"), 6379));
    }
}

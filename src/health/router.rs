//! The probe routes: `/livez`, `/readyz`, `/startupz`, `/health` and one path per check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::check::{Group, Status};
use super::registry::{Health, Report};

/// Whether failure details (check messages, observed values) are shown.
#[derive(Clone, Default)]
pub enum Details {
    /// Never (the default): a probe says which check failed, not why.
    #[default]
    Hidden,
    /// Always: for internal listeners.
    Shown,
    /// When the predicate accepts the request's headers (e.g. an admin token).
    When(Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>),
}

impl std::fmt::Debug for Details {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Details::Hidden => "Hidden",
            Details::Shown => "Shown",
            Details::When(_) => "When(..)",
        })
    }
}

/// Settings of the probe routes.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// A probe answers within this, whatever the checks do (default 800 ms, under the
    /// kubelet's 1 s timeout).
    pub deadline: Duration,
    /// Failure details.
    pub details: Details,
    /// HTTP status of a Degraded aggregate (default 200).
    pub degraded_status: StatusCode,
    /// HTTP status of a Down aggregate (default 503).
    pub down_status: StatusCode,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(800),
            details: Details::Hidden,
            degraded_status: StatusCode::OK,
            down_status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Clone)]
struct Ctx {
    health: Health,
    cfg: Arc<RouterConfig>,
}

#[derive(Clone, Copy)]
enum Probe {
    Live,
    Ready,
    Startup,
    All,
}

impl Probe {
    fn group(self) -> Option<Group> {
        match self {
            Probe::Live => Some(Group::Liveness),
            Probe::Ready => Some(Group::Readiness),
            Probe::Startup => Some(Group::Startup),
            Probe::All => None,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Probe::Live => "livez",
            Probe::Ready => "readyz",
            Probe::Startup => "startupz",
            Probe::All => "health",
        }
    }
}

impl Health {
    /// The probe routes with the default settings, to merge into any axum router.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        self.router_with(RouterConfig::default())
    }

    /// The probe routes with these settings.
    pub fn router_with<S: Clone + Send + Sync + 'static>(&self, cfg: RouterConfig) -> Router<S> {
        let ctx = Ctx {
            health: self.clone(),
            cfg: Arc::new(cfg),
        };
        let mut r = Router::new();
        for probe in [Probe::Live, Probe::Ready, Probe::Startup, Probe::All] {
            let base = format!("/{}", probe.word());
            r = r
                .route(
                    &base,
                    get(move |State(c): State<Ctx>, h: HeaderMap, RawQuery(q): RawQuery| async move {
                        answer(c, probe, None, h, q).await
                    }),
                )
                .route(
                    &format!("{base}/{{name}}"),
                    get(
                        move |State(c): State<Ctx>,
                              Path(name): Path<String>,
                              h: HeaderMap,
                              RawQuery(q): RawQuery| async move {
                            answer(c, probe, Some(name), h, q).await
                        },
                    ),
                );
        }
        r.with_state(ctx)
    }

    /// The probe routes as a plain Tower service, for Hyper users.
    pub fn service<B>(&self) -> axum::routing::RouterIntoService<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        self.router::<()>().into_service()
    }
}

struct Query {
    verbose: bool,
    json: bool,
    exclude: Vec<String>,
}

fn parse_query(q: Option<&str>, headers: &HeaderMap) -> Query {
    let mut out = Query {
        verbose: false,
        json: false,
        exclude: Vec::new(),
    };
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match &*k {
            "verbose" => out.verbose = v != "false" && v != "0",
            "format" => out.json = v == "json",
            "exclude" => out.exclude.push(v.into_owned()),
            _ => {}
        }
    }
    out.json |= wants_json(headers);
    out
}

/// Whether `Accept` prefers the JSON answer (`application/health+json`, or plain
/// `application/json`) to the text one.
fn wants_json(headers: &HeaderMap) -> bool {
    crate::lifecycle::headers::prefers_over_text(headers, &["health+json", "json"])
}

async fn answer(
    c: Ctx,
    probe: Probe,
    only: Option<String>,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    let q = parse_query(query.as_deref(), &headers);
    let health = &c.health;
    let mut reports = health
        .evaluate(probe.group().as_ref(), &q.exclude, c.cfg.deadline)
        .await;
    if let Some(name) = &only {
        reports.retain(|r| *r.name == **name);
        if reports.is_empty() {
            return plain(StatusCode::NOT_FOUND, format!("no check named {name:?}\n"));
        }
    }
    let rows = rows(health, probe.group(), &reports, &q.exclude, only.is_none());
    let mut status = Health::aggregate(&reports);
    let mut extra: Option<(&str, &str)> = None;
    match probe {
        Probe::Ready | Probe::All if only.is_none() && health.is_draining() => {
            status = Status::Down;
            extra = Some(("shutdown", "draining"));
        }
        Probe::Startup if only.is_none() => {
            // A latch: once started, always started.
            if health.inner.startup_passed.load(Ordering::SeqCst) {
                status = Status::Up;
            } else if status != Status::Down {
                health.inner.startup_passed.store(true, Ordering::SeqCst);
            }
        }
        _ => {}
    }
    let code = match status {
        Status::Up => StatusCode::OK,
        Status::Degraded | Status::Unknown => c.cfg.degraded_status,
        Status::Down => c.cfg.down_status,
    };
    let details = match &c.cfg.details {
        Details::Hidden => false,
        Details::Shown => true,
        Details::When(f) => f(&headers),
    };
    let mut res = if q.json {
        json(code, status, &reports, extra, details)
    } else {
        text(code, probe, status, &rows, extra, details, q.verbose)
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn plain(code: StatusCode, body: String) -> Response {
    let mut res = (code, body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A line of the text format.
enum Row<'a> {
    Checked(&'a Report),
    /// A check of the probe that `?exclude=` left out.
    Excluded(Arc<str>),
    /// `?exclude=` names that match none of the probe's checks (sorted, without repeats).
    Unmatched(Vec<&'a str>),
}

/// The text format's lines, as the API server writes them: the probe's checks in the order
/// they were registered, each excluded one as `[+]name excluded: ok` where it would have
/// been, then a warning for exclusions that match no check. A path naming one check
/// (`/readyz/{check}`) has no exclusions.
fn rows<'a>(
    health: &Health,
    group: Option<Group>,
    reports: &'a [Report],
    exclude: &'a [String],
    whole: bool,
) -> Vec<Row<'a>> {
    if !whole || exclude.is_empty() {
        return reports.iter().map(Row::Checked).collect();
    }
    let mut rows = Vec::with_capacity(reports.len() + exclude.len());
    let mut matched = vec![false; exclude.len()];
    let mut placed = vec![false; reports.len()];
    for e in health.entries() {
        if group.as_ref().is_some_and(|g| !e.reg.groups.contains(g)) {
            continue;
        }
        let name = &e.reg.name;
        let mut excluded = false;
        for (x, m) in exclude.iter().zip(&mut matched) {
            if **x == **name {
                *m = true;
                excluded = true;
            }
        }
        if excluded {
            rows.push(Row::Excluded(name.clone()));
        } else if let Some(i) = reports.iter().position(|r| r.name == *name) {
            placed[i] = true;
            rows.push(Row::Checked(&reports[i]));
        }
    }
    // A check registered while the probe ran: its report, after the others.
    rows.extend(
        reports
            .iter()
            .zip(placed)
            .filter(|(_, placed)| !placed)
            .map(|(r, _)| Row::Checked(r)),
    );
    let mut unmatched: Vec<&str> = exclude
        .iter()
        .zip(matched)
        .filter(|(_, m)| !m)
        .map(|(x, _)| x.as_str())
        .collect();
    unmatched.sort_unstable();
    unmatched.dedup();
    if !unmatched.is_empty() {
        rows.push(Row::Unmatched(unmatched));
    }
    rows
}

/// The Kubernetes API server's text format.
fn text(
    code: StatusCode,
    probe: Probe,
    status: Status,
    rows: &[Row<'_>],
    extra: Option<(&str, &str)>,
    details: bool,
    verbose: bool,
) -> Response {
    let failed = status == Status::Down;
    if !verbose && !failed {
        return (code, "ok").into_response();
    }
    let mut body = String::new();
    for row in rows {
        let r = match row {
            Row::Checked(r) => r,
            Row::Excluded(name) => {
                body.push_str(&format!("[+]{name} excluded: ok\n"));
                continue;
            }
            Row::Unmatched(names) => {
                let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                body.push_str(&format!(
                    "warn: some health checks cannot be excluded: no matches for {}\n",
                    quoted.join(",")
                ));
                continue;
            }
        };
        let failing = match r.result.status {
            Status::Down => true,
            Status::Unknown => r.critical,
            Status::Up | Status::Degraded => false,
        };
        if !failing {
            body.push_str(&format!("[+]{} ok", r.name));
            if r.result.status != Status::Up {
                body.push_str(&format!(" ({})", r.result.status.as_str()));
            }
        } else {
            body.push_str(&format!("[-]{} failed", r.name));
            if details {
                if let Some(m) = &r.result.message {
                    body.push_str(&format!(": {}", m.replace('\n', " ")));
                }
            } else {
                body.push_str(": reason withheld");
            }
        }
        body.push('\n');
    }
    if let Some((name, why)) = extra {
        body.push_str(&format!("[-]{name} failed: {why}\n"));
    }
    body.push_str(&format!(
        "{} check {}\n",
        probe.word(),
        if failed { "failed" } else { "passed" }
    ));
    (code, body).into_response()
}

/// The IETF health-check response format (`application/health+json`).
fn json(
    code: StatusCode,
    status: Status,
    reports: &[Report],
    extra: Option<(&str, &str)>,
    details: bool,
) -> Response {
    let mut checks = serde_json::Map::new();
    for r in reports {
        let mut c = serde_json::Map::new();
        if let Some(t) = &r.component_type {
            c.insert("componentType".into(), t.clone().into());
        }
        c.insert("status".into(), r.result.status.ietf().into());
        c.insert("time".into(), rfc3339(r.result.time).into());
        if details {
            if let Some(v) = r.result.observed_value {
                c.insert("observedValue".into(), v.into());
            }
            if let Some(u) = &r.result.observed_unit {
                c.insert("observedUnit".into(), u.clone().into());
            }
            if let Some(m) = &r.result.message {
                c.insert("output".into(), m.clone().into());
            }
        }
        checks.insert(r.name.to_string(), serde_json::Value::Array(vec![c.into()]));
    }
    let mut body = serde_json::Map::new();
    body.insert("status".into(), status.ietf().into());
    if let Some((name, why)) = extra {
        body.insert("output".into(), format!("{name}: {why}").into());
    }
    body.insert("checks".into(), checks.into());
    let mut res = (code, serde_json::Value::Object(body).to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/health+json"),
    );
    res
}

/// RFC 3339 UTC with seconds, from a `SystemTime`.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let (y, m, d, hh, mm, ss, _) = crate::time::utc(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_795_600_000)), "2026-11-25T09:46:40Z");
    }

    #[test]
    fn accept_chooses_json_by_weight() {
        let wants = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT, v.parse().unwrap());
            }
            wants_json(&h)
        };
        for (values, json) in [
            (&[][..], false),
            (&["application/health+json"][..], true),
            (&["Application/JSON"][..], true),
            (&["application/json, */*"][..], true),
            (&["application/*"][..], true),
            (&["text/plain;q=0.4", "application/json"][..], true),
            // The kubelet and curl.
            (&["*/*"][..], false),
            // A browser.
            (
                &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"][..],
                false,
            ),
            (&["text/plain, application/json;q=0.5"][..], false),
            (&["application/json;q=0"][..], false),
            (&["application/json;q=0.2, text/*;q=0.3"][..], false),
            (&["application/json;q=bad"][..], false),
            (&["image/png"][..], false),
        ] {
            assert_eq!(wants(values), json, "{values:?}");
        }
    }
}

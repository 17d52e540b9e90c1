//! Tokens, scopes, roles and tenancy (SPEC §6).
//!
//! Auth is off unless `SPLAI_API_TOKENS` is set. Then every route but health needs a token, in
//! `Authorization: Bearer <token>` or `X-SPLAI-Token`, whose scopes satisfy the route's
//! [`Permission`]. The router declares each route's permission (`gateway::router`); the
//! [`authorize`] layer checks it and hands the handler a [`Caller`].
//!
//! Tokens are kept only as SHA-256 digests, compared in constant time, and shown (in `Debug`,
//! logs, audit actors) only as a [`fingerprint`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use splai_shared::domain::TenantId;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::error::ApiError;

/// One scope a token may hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `admin`: every scope, every tenant.
    Admin,
    /// `operator`: operator endpoints and metrics; every tenant.
    Operator,
    /// `metrics`: the metrics endpoints.
    Metrics,
    /// `tenant:*`: every tenant.
    AllTenants,
    /// `tenant:<id>`: this tenant (a token with any of these acts only within them).
    Tenant(TenantId),
    /// `job:read`: read, list and follow jobs, tasks and outputs.
    JobRead,
    /// `job:submit`: submit and retry jobs.
    JobSubmit,
    /// `job:cancel`: cancel jobs.
    JobCancel,
    /// `task:report`: the worker endpoints (register, heartbeat, claim, release, report).
    TaskReport,
}

impl Scope {
    /// Parses one scope as written in the variables.
    ///
    /// # Errors
    /// An unknown scope, or a `tenant:` scope with an invalid tenant id.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "admin" => Self::Admin,
            "operator" => Self::Operator,
            "metrics" => Self::Metrics,
            "tenant:*" => Self::AllTenants,
            "job:read" => Self::JobRead,
            "job:submit" => Self::JobSubmit,
            "job:cancel" => Self::JobCancel,
            "task:report" => Self::TaskReport,
            other => match other.strip_prefix("tenant:") {
                Some(t) => Self::Tenant(
                    TenantId::parse(t.to_owned()).map_err(|e| format!("scope `{other}`: {e}"))?,
                ),
                None => {
                    return Err(format!(
                        "unknown scope `{other}` (known: admin, operator, metrics, tenant:*, \
                         tenant:<id>, job:read, job:submit, job:cancel, task:report)"
                    ));
                }
            },
        })
    }
}

/// What a route needs. Each is satisfied by the scopes listed; `admin` satisfies all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `job:read`.
    JobRead,
    /// `job:read` or `task:report` (a worker reads its dependencies' outputs).
    OutputRead,
    /// `job:submit`.
    JobSubmit,
    /// `job:cancel`.
    JobCancel,
    /// `task:report`.
    TaskReport,
    /// `operator`.
    Operator,
    /// `metrics` or `operator`.
    Metrics,
    /// `admin`.
    Admin,
}

impl Permission {
    fn satisfied_by(self, s: &Scope) -> bool {
        use Permission as P;
        matches!(
            (self, s),
            (_, Scope::Admin)
                | (P::JobRead | P::OutputRead, Scope::JobRead)
                | (P::OutputRead | P::TaskReport, Scope::TaskReport)
                | (P::JobSubmit, Scope::JobSubmit)
                | (P::JobCancel, Scope::JobCancel)
                | (P::Operator | P::Metrics, Scope::Operator)
                | (P::Metrics, Scope::Metrics)
        )
    }

    /// The scopes that satisfy it besides `admin`, for the OpenAPI document.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Self::JobRead => &["job:read"],
            Self::OutputRead => &["job:read", "task:report"],
            Self::JobSubmit => &["job:submit"],
            Self::JobCancel => &["job:cancel"],
            Self::TaskReport => &["task:report"],
            Self::Operator => &["operator"],
            Self::Metrics => &["metrics", "operator"],
            Self::Admin => &[],
        }
    }

    /// The scopes that satisfy it, for the 403 message.
    fn wanted(self) -> &'static str {
        match self {
            Self::JobRead => "job:read",
            Self::OutputRead => "job:read or task:report",
            Self::JobSubmit => "job:submit",
            Self::JobCancel => "job:cancel",
            Self::TaskReport => "task:report",
            Self::Operator => "operator",
            Self::Metrics => "metrics or operator",
            Self::Admin => "admin",
        }
    }
}

/// The built-in roles, as `SPLAI_API_ROLES` would write them. A role of the same name in
/// `SPLAI_API_ROLES` replaces the built-in one.
pub const BUILTIN_ROLES: &[(&str, &str)] = &[
    ("admin", "admin"),
    ("ops", "operator|metrics|job:read|job:cancel"),
    ("tenant-runner", "job:submit|job:read|job:cancel"),
    ("tenant-reader", "job:read"),
];

/// The first 12 hex characters of the token's SHA-256: names a token in logs and audit
/// records without revealing it.
pub fn fingerprint(token: &str) -> String {
    let mut hex = hex::encode(Sha256::digest(token.as_bytes()));
    hex.truncate(12);
    hex
}

struct Known {
    digest: [u8; 32],
    caller: Caller,
}

/// The configured tokens. Present only when auth is on.
pub struct Tokens {
    known: Vec<Known>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fingerprints only: a token never reaches a log through `Debug`.
        f.debug_map()
            .entries(
                self.known
                    .iter()
                    .map(|k| (&k.caller.fingerprint, &k.caller.scopes)),
            )
            .finish()
    }
}

fn split_list<'a>(s: &'a str, seps: &'a [char]) -> impl Iterator<Item = &'a str> + 'a {
    s.split(seps).map(str::trim).filter(|p| !p.is_empty())
}

fn parse_scopes(list: &str, var: &str, what: &str) -> anyhow::Result<BTreeSet<Scope>> {
    split_list(list, &['|'])
        .map(|s| Scope::parse(s).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<BTreeSet<_>>>()
        .with_context(|| format!("invalid {var}: {what}"))
}

impl Tokens {
    /// Reads `SPLAI_API_TOKENS` (`token:scope|scope,...`), `SPLAI_API_ROLES`
    /// (`role=scope|scope;...`, `,` also separates) and `SPLAI_API_TOKEN_ROLES`
    /// (`token=role|role,...`, `;` also separates). `None` (auth off) when `SPLAI_API_TOKENS`
    /// is unset. Error messages name the variable and never contain a token.
    ///
    /// # Errors
    /// Invalid syntax, an unknown scope or role, or roles given with auth off.
    pub fn from_vars(
        tokens: Option<&str>,
        roles: Option<&str>,
        token_roles: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(tokens) = tokens else {
            if roles.is_some() || token_roles.is_some() {
                bail!(
                    "SPLAI_API_ROLES or SPLAI_API_TOKEN_ROLES is set but SPLAI_API_TOKENS is not; \
                     auth stays off unless SPLAI_API_TOKENS is set"
                );
            }
            return Ok(None);
        };
        let mut role_scopes: BTreeMap<String, BTreeSet<Scope>> = BTreeMap::new();
        for (name, scopes) in BUILTIN_ROLES {
            let scopes = parse_scopes(scopes, "built-in role", name)?;
            role_scopes.insert((*name).to_owned(), scopes);
        }
        for (i, entry) in split_list(roles.unwrap_or(""), &[';', ',']).enumerate() {
            let Some((name, scopes)) = entry.split_once('=') else {
                bail!(
                    "invalid SPLAI_API_ROLES: entry {} is not `role=scope|scope`",
                    i + 1
                );
            };
            let name = name.trim();
            if name.is_empty() {
                bail!("invalid SPLAI_API_ROLES: entry {} has no role name", i + 1);
            }
            let scopes = parse_scopes(scopes, "SPLAI_API_ROLES", &format!("role `{name}`"))?;
            role_scopes.insert(name.to_owned(), scopes);
        }
        let mut by_token: BTreeMap<String, BTreeSet<Scope>> = BTreeMap::new();
        for (i, entry) in split_list(tokens, &[',']).enumerate() {
            // The token ends at the first `:`; scopes such as `tenant:a` contain one.
            let Some((token, scopes)) = entry.split_once(':') else {
                bail!(
                    "invalid SPLAI_API_TOKENS: entry {} is not `token:scope|scope`",
                    i + 1
                );
            };
            let token = token.trim();
            if token.is_empty() {
                bail!(
                    "invalid SPLAI_API_TOKENS: entry {} has an empty token",
                    i + 1
                );
            }
            let what = format!("entry {} (token {})", i + 1, fingerprint(token));
            let scopes = parse_scopes(scopes, "SPLAI_API_TOKENS", &what)?;
            by_token.entry(token.to_owned()).or_default().extend(scopes);
        }
        for (i, entry) in split_list(token_roles.unwrap_or(""), &[',', ';']).enumerate() {
            let Some((token, names)) = entry.split_once('=') else {
                bail!(
                    "invalid SPLAI_API_TOKEN_ROLES: entry {} is not `token=role`",
                    i + 1
                );
            };
            let token = token.trim();
            if token.is_empty() {
                bail!(
                    "invalid SPLAI_API_TOKEN_ROLES: entry {} has an empty token",
                    i + 1
                );
            }
            let scopes = by_token.entry(token.to_owned()).or_default();
            for name in split_list(names, &['|']) {
                let Some(role) = role_scopes.get(name) else {
                    bail!(
                        "invalid SPLAI_API_TOKEN_ROLES: entry {} names unknown role `{name}` \
                         (known: {})",
                        i + 1,
                        role_scopes.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                };
                scopes.extend(role.iter().cloned());
            }
        }
        if by_token.is_empty() {
            bail!("invalid SPLAI_API_TOKENS: no tokens given");
        }
        let known = by_token
            .into_iter()
            .map(|(token, scopes)| Known {
                digest: Sha256::digest(token.as_bytes()).into(),
                caller: Caller {
                    fingerprint: fingerprint(&token).into(),
                    scopes: Arc::new(scopes),
                },
            })
            .collect();
        Ok(Some(Self { known }))
    }

    /// The caller a request's token names.
    ///
    /// # Errors
    /// 401 for a missing or unknown token (the message never repeats the token).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = presented(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "a token is required: send `Authorization: Bearer <token>` or `X-SPLAI-Token`",
            )
        })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every known digest is compared in full, whatever matched, so timing says nothing
        // about which token (or how much of one) was right.
        let mut found = None;
        for k in &self.known {
            if ct_eq(&digest, &k.digest) {
                found = Some(k);
            }
        }
        found
            .map(|k| k.caller.clone())
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

/// Constant-time equality of two digests.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get("x-splai-token")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|t| !t.is_empty())
}

/// Which tenants a caller may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantAccess {
    /// Every tenant: auth off, `admin`, `operator`, `tenant:*`, or no `tenant:` scope at all.
    All,
    /// Only these (the token's `tenant:<id>` scopes).
    Only(BTreeSet<TenantId>),
}

/// Who is calling, as the [`authorize`] layer found out. Handlers take it as an extractor.
#[derive(Clone)]
pub struct Caller {
    fingerprint: Arc<str>,
    scopes: Arc<BTreeSet<Scope>>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("fingerprint", &self.fingerprint)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Caller {
    /// The caller when auth is off: every scope.
    pub fn anonymous() -> Self {
        // Built once: with auth off every request takes this caller.
        static ANONYMOUS: std::sync::OnceLock<Caller> = std::sync::OnceLock::new();
        ANONYMOUS
            .get_or_init(|| Self {
                fingerprint: "anonymous".into(),
                scopes: Arc::new(BTreeSet::from([Scope::Admin])),
            })
            .clone()
    }

    /// The token's [`fingerprint`] (`anonymous` with auth off), for audit actor fields.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether the caller holds what `need` asks for.
    pub fn allows(&self, need: Permission) -> bool {
        self.scopes.iter().any(|s| need.satisfied_by(s))
    }

    /// The tenants the caller may act in. A token with `tenant:<id>` scopes is held to them
    /// unless it also holds `tenant:*`, `operator` or `admin`; a token with no `tenant:` scope
    /// (a worker's, say) is not held to any.
    pub fn tenants(&self) -> TenantAccess {
        let everywhere = self
            .scopes
            .iter()
            .any(|s| matches!(s, Scope::Admin | Scope::Operator | Scope::AllTenants));
        let only: BTreeSet<TenantId> = self
            .scopes
            .iter()
            .filter_map(|s| match s {
                Scope::Tenant(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        if everywhere || only.is_empty() {
            TenantAccess::All
        } else {
            TenantAccess::Only(only)
        }
    }

    /// Whether the caller may act in `tenant`.
    pub fn may_act_in(&self, tenant: &TenantId) -> bool {
        match self.tenants() {
            TenantAccess::All => true,
            TenantAccess::Only(set) => set.contains(tenant),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(
                &"route has no authorize layer; declare its permission in the router",
            )
        })
    }
}

/// The state of the [`authorize`] layer: the tokens (none: auth off) and what the route needs.
#[derive(Clone)]
pub struct Guard {
    /// The configured tokens; `None` means auth is off.
    pub tokens: Option<Arc<Tokens>>,
    /// What the route needs.
    pub need: Permission,
}

/// What every router calls to guard a route: `g(need, routes!(handler))` puts [`authorize`]
/// for `need` on it and writes `need` into the route's OpenAPI operations, so each router's
/// route table is the one place its routes are authorised and documented.
pub fn guarded<S>(
    tokens: Option<Arc<Tokens>>,
) -> impl Fn(Permission, UtoipaMethodRouter<S>) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    move |need, (schemas, mut paths, m)| {
        crate::openapi::require(&mut paths, need.scopes());
        let guard = Guard {
            tokens: tokens.clone(),
            need,
        };
        let m = m.route_layer(axum::middleware::from_fn_with_state(guard, authorize));
        (schemas, paths, m)
    }
}

/// The layer every non-health route runs: 401 without a known token, 403 without the
/// permission, otherwise the request goes on carrying its [`Caller`].
pub async fn authorize(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let caller = match &g.tokens {
        None => Caller::anonymous(),
        Some(tokens) => match tokens.authenticate(req.headers()) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        },
    };
    if !caller.allows(g.need) {
        return ApiError::forbidden(format!("this token lacks scope {}", g.need.wanted()))
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(t: &str, r: Option<&str>, tr: Option<&str>) -> anyhow::Result<Option<Tokens>> {
        Tokens::from_vars(Some(t), r, tr)
    }

    fn caller(t: &Tokens, token: &str) -> Caller {
        let mut h = HeaderMap::new();
        h.insert("x-splai-token", token.parse().unwrap());
        t.authenticate(&h).unwrap()
    }

    #[test]
    fn off_unless_tokens_are_set() {
        assert!(Tokens::from_vars(None, None, None).unwrap().is_none());
        let e = Tokens::from_vars(None, Some("x=job:read"), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_API_TOKENS is not"),
            "{e:#}"
        );
    }

    #[test]
    fn invalid_syntax_names_the_variable_not_the_token() {
        let e = tokens("sekrit-token:job:reed", None, None).unwrap_err();
        let m = format!("{e:#}");
        assert!(
            m.contains("SPLAI_API_TOKENS") && m.contains("job:reed"),
            "{m}"
        );
        assert!(!m.contains("sekrit"), "{m}");
        let e = tokens("sekrit-token", None, None).unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_API_TOKENS"), "{e:#}");
        let e = tokens("t:job:read", Some("ops"), None).unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_API_ROLES"), "{e:#}");
        let e = tokens("t:job:read", None, Some("sekrit=nobody")).unwrap_err();
        let m = format!("{e:#}");
        assert!(
            m.contains("SPLAI_API_TOKEN_ROLES") && m.contains("nobody"),
            "{m}"
        );
        assert!(!m.contains("sekrit"), "{m}");
    }

    #[test]
    fn roles_add_scopes() {
        let t = tokens(
            "a:tenant:acme,b:metrics",
            Some("auditor=job:read|metrics;lead=job:submit"),
            Some("a=tenant-runner,b=auditor|lead,c=admin"),
        )
        .unwrap()
        .unwrap();
        let a = caller(&t, "a");
        assert!(a.allows(Permission::JobSubmit) && !a.allows(Permission::Operator));
        assert!(a.may_act_in(&TenantId::parse("acme".to_owned()).unwrap()));
        assert!(!a.may_act_in(&TenantId::default_tenant()));
        let b = caller(&t, "b");
        assert!(b.allows(Permission::JobRead) && b.allows(Permission::JobSubmit));
        assert_eq!(b.tenants(), TenantAccess::All);
        let c = caller(&t, "c");
        assert!(c.allows(Permission::Operator) && c.allows(Permission::TaskReport));
        assert!(!format!("{t:?}").contains("\"a\""), "{t:?}");
    }

    #[test]
    fn fingerprints_are_short_and_stable() {
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert!(ct_eq(&[7; 32], &[7; 32]) && !ct_eq(&[7; 32], &[8; 32]));
    }
}

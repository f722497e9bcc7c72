//! Sessions that ended before their cookies did.
//!
//! tollgate keeps sessions in the browser, so a logout cannot delete one: a copy of the cookie
//! taken before the logout would keep working until its access token needs a refresh. Every
//! session therefore carries a random id, and a logout (`POST /logout`) or a back-channel
//! logout from the provider records what ended here, for as long as such a session could still
//! open (`max_lifetime`). The hot path asks [`Revocations::is_revoked`]: with nothing revoked it
//! is one atomic load, otherwise a read lock and up to three hash lookups, never I/O.
//!
//! What can be revoked: one session (its id), every session of a provider session (`sid`,
//! from a back-channel logout token), and every session of a user that started before a time
//! (`sub` and the logout token's `iat`). This set lives in the process; sharing it between
//! replicas is the store's job (issue 11), which feeds the same structure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::Session;

/// One revocation, as recorded and as shared between replicas (JSON in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// One session, by its id (as hex text: serde's tagged enums cannot carry a `u128`).
    Session {
        #[serde(with = "hex_id")]
        id: u128,
        until: u64,
    },
    /// Every session of a provider session.
    ProviderSession { sid: String, until: u64 },
    /// Every session of a user created before `before`.
    UserBefore {
        sub: String,
        before: u64,
        until: u64,
    },
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:032x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// How a provider's user (`sub`) or provider session (`sid`) is named in a revocation: as
/// is for the default provider (so revocations recorded before there were several providers
/// still apply), `NAME` and a unit separator before it for the others, so that two providers'
/// values never meet.
pub fn qualified<'v>(provider: &str, value: &'v str) -> std::borrow::Cow<'v, str> {
    if provider == "default" {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(format!("{provider}\u{1f}{value}"))
    }
}

impl Revocation {
    /// Until when it matters (after that, no session it covers can open).
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Session { until, .. }
            | Revocation::ProviderSession { until, .. }
            | Revocation::UserBefore { until, .. } => *until,
        }
    }
}

/// The most entries kept of each kind; past it, the entries closest to expiry go first (a
/// flood of back-channel logouts cannot grow memory without bound).
const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, Default)]
struct Sets {
    /// Session id → until when it is kept.
    sessions: HashMap<u128, u64>,
    /// Provider `sid` → until when.
    provider_sessions: HashMap<String, u64>,
    /// `sub` → (sessions created before this are revoked, until when).
    users: HashMap<String, (u64, u64)>,
}

/// The revoked sessions of this process.
#[derive(Debug, Default)]
pub struct Revocations {
    any: AtomicBool,
    sets: RwLock<Sets>,
}

fn keep<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, until: impl Fn(&V) -> u64, now: u64) {
    map.retain(|_, v| until(v) > now);
    if map.len() >= MAX_ENTRIES {
        let mut ends: Vec<u64> = map.values().map(&until).collect();
        ends.sort_unstable();
        let cut = ends[ends.len() / 10];
        map.retain(|_, v| until(v) > cut);
    }
}

impl Revocations {
    /// Whether `session` was ended here (logout) or by the provider (back-channel logout).
    pub fn is_revoked(&self, session: &Session<'_>, now: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let Ok(sets) = self.sets.read() else {
            return false;
        };
        let live = |until: u64| until > now;
        if sets.sessions.get(&session.id).is_some_and(|u| live(*u)) {
            return true;
        }
        let provider = session.provider_name();
        if let Some(sid) = session.claims.sid.as_deref() {
            if sets
                .provider_sessions
                .get(&*qualified(provider, sid))
                .is_some_and(|u| live(*u))
            {
                return true;
            }
        }
        sets.users
            .get(&*qualified(provider, &session.claims.sub))
            .is_some_and(|(before, until)| live(*until) && session.created_at < *before)
    }

    fn write(&self, now: u64, f: impl FnOnce(&mut Sets)) {
        if let Ok(mut sets) = self.sets.write() {
            f(&mut sets);
            keep(&mut sets.sessions, |u| *u, now);
            keep(&mut sets.provider_sessions, |u| *u, now);
            keep(&mut sets.users, |(_, u)| *u, now);
            self.any.store(true, Ordering::Release);
        }
    }

    /// Records `r` (from this process or from another replica through the store).
    pub fn apply(&self, r: &Revocation, now: u64) {
        match r {
            Revocation::Session { id, until } => self.revoke_session(*id, *until, now),
            Revocation::ProviderSession { sid, until } => {
                self.revoke_provider_session(sid, *until, now)
            }
            Revocation::UserBefore { sub, before, until } => {
                self.revoke_user_before(sub, *before, *until, now)
            }
        }
    }

    /// Revokes the session with this id until `until`.
    pub fn revoke_session(&self, id: u128, until: u64, now: u64) {
        self.write(now, |s| {
            s.sessions.insert(id, until);
        });
    }

    /// Revokes every session of the provider session `sid` until `until`.
    pub fn revoke_provider_session(&self, sid: &str, until: u64, now: u64) {
        self.write(now, |s| {
            s.provider_sessions.insert(sid.to_string(), until);
        });
    }

    /// Revokes every session of user `sub` created before `before`, until `until`.
    pub fn revoke_user_before(&self, sub: &str, before: u64, until: u64, now: u64) {
        self.write(now, |s| {
            let entry = s.users.entry(sub.to_string()).or_insert((before, until));
            entry.0 = entry.0.max(before);
            entry.1 = entry.1.max(until);
        });
    }
}

/// Logout token ids already accepted (OpenID Connect Back-Channel Logout: a `jti` is used
/// once), with when each may be forgotten.
#[derive(Debug, Default)]
pub(crate) struct SeenJtis(std::sync::Mutex<HashMap<String, u64>>);

impl SeenJtis {
    /// Records `jti` for `ttl` seconds; `false` when it was seen before.
    pub(crate) fn first_use(&self, jti: &str, now: u64, ttl: u64) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        keep(&mut seen, |u| *u, now);
        seen.insert(jti.to_string(), now + ttl).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixture;

    #[test]
    fn each_kind_of_revocation() {
        let r = Revocations::default();
        let s = fixture::session(1_000, "at");
        assert!(!r.is_revoked(&s, 1_001));
        r.revoke_session(s.id ^ 1, 5_000, 1_001);
        assert!(!r.is_revoked(&s, 1_001), "another session");
        r.revoke_session(s.id, 5_000, 1_001);
        assert!(r.is_revoked(&s, 1_001));
        assert!(
            !r.is_revoked(&s, 5_000),
            "kept only while the session could open"
        );

        let r = Revocations::default();
        r.revoke_provider_session(s.claims.sid.as_deref().unwrap(), 5_000, 1_001);
        assert!(r.is_revoked(&s, 1_001));

        let r = Revocations::default();
        r.revoke_user_before(&s.claims.sub, 1_000, 5_000, 1_001);
        assert!(
            !r.is_revoked(&s, 1_001),
            "created at the logout token's iat: kept"
        );
        r.revoke_user_before(&s.claims.sub, 1_001, 5_000, 1_001);
        assert!(r.is_revoked(&s, 1_002));
        let mut later = fixture::session(2_000, "at");
        later.claims.sub = s.claims.sub.clone();
        assert!(
            !r.is_revoked(&later, 2_001),
            "a login after the logout is a new session"
        );
    }

    /// Two providers' users or provider sessions of the same name are not each other's.
    #[test]
    fn revocations_are_per_provider() {
        let s = fixture::session(1_000, "at");
        let mut b = fixture::session(1_000, "at");
        b.claims.sub = s.claims.sub.clone();
        b.claims.sid = s.claims.sid.clone();
        b.provider = Some("b".into());
        let r = Revocations::default();
        r.revoke_user_before(&s.claims.sub, 1_001, 5_000, 1_001);
        r.revoke_provider_session(s.claims.sid.as_deref().unwrap(), 5_000, 1_001);
        assert!(r.is_revoked(&s, 1_002));
        assert!(
            !r.is_revoked(&b, 1_002),
            "the default provider's user, not b's"
        );
        let r = Revocations::default();
        r.revoke_user_before(&qualified("b", &b.claims.sub), 1_001, 5_000, 1_001);
        assert!(r.is_revoked(&b, 1_002));
        assert!(!r.is_revoked(&s, 1_002));
        let r = Revocations::default();
        r.revoke_provider_session(
            &qualified("b", b.claims.sid.as_deref().unwrap()),
            5_000,
            1_001,
        );
        assert!(r.is_revoked(&b, 1_002));
        assert!(!r.is_revoked(&s, 1_002));
    }

    #[test]
    fn a_jti_is_accepted_once_and_forgotten_after_its_ttl() {
        let seen = SeenJtis::default();
        assert!(seen.first_use("a", 1_000, 60));
        assert!(!seen.first_use("a", 1_001, 60));
        assert!(seen.first_use("b", 1_001, 60));
        assert!(seen.first_use("a", 1_061, 60));
    }

    #[test]
    fn revocations_travel_as_json() {
        for r in [
            Revocation::Session {
                id: u128::MAX - 7,
                until: 9,
            },
            Revocation::ProviderSession {
                sid: "s 1".into(),
                until: 9,
            },
            Revocation::UserBefore {
                sub: "u".into(),
                before: 3,
                until: 9,
            },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(
                serde_json::from_str::<Revocation>(&text).unwrap(),
                r,
                "{text}"
            );
        }
    }
}

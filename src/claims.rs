//! Claims a session keeps for route rules and identity headers, and the rules themselves.
//!
//! A route can require claims of the logged-in user (`[[routes]] require = { groups =
//! ["admin"], email_verified = true }`) and can pass who the user is to its upstream
//! (`identity_headers = true`). Both read claims from the session, so the session keeps the
//! ones the configuration names, and only those: every claim kept is in every request's
//! cookie. They come from the ID token at login.
//!
//! The rule syntax, defined once here (the config parses it with [`ClaimRule`]'s
//! `Deserialize`, the gate checks it with [`ClaimRule::allows`]):
//! - each key is a claim name; every key must match (AND);
//! - a value is a string, an integer or a boolean, or a list of them;
//! - a single value matches a claim equal to it, or a list claim that contains it;
//! - a list matches when any of its values matches (any-of), so `groups = ["a", "b"]` lets in
//!   members of either group;
//! - a claim that is missing, or of another type (`"true"` is not `true`), does not match.
//!
//! Values are compared exactly: no case folding, no trimming.
//!
//! Two keys are not claims but a step-up rule (RFC 9470, [`StepUp`]): `acr` (the
//! authentication context classes any one of which the login must have had) and `max_age`
//! (how long ago, at most, the user authenticated: seconds, or `"10m"`, `"1h"`). A session
//! that falls short is not refused (`403`) but asked to log in again, more strongly.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// One claim value of a type a rule can compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    fn from_json(v: &serde_json::Value) -> Option<Scalar> {
        match v {
            serde_json::Value::String(s) => Some(Scalar::Str(s.clone())),
            serde_json::Value::Bool(b) => Some(Scalar::Bool(*b)),
            serde_json::Value::Number(n) => n.as_i64().map(Scalar::Int),
            _ => None,
        }
    }

    /// The value as a header value's text (identity headers).
    pub(crate) fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Scalar::Str(s) => s.as_str().into(),
            Scalar::Int(i) => i.to_string().into(),
            Scalar::Bool(b) => if *b { "true" } else { "false" }.into(),
        }
    }
}

/// A claim as the session keeps it: one value or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimValue {
    One(Scalar),
    Many(Vec<Scalar>),
}

impl ClaimValue {
    /// A JSON claim as kept: strings, integers, booleans and lists of them; anything else
    /// (objects, floats, nested lists) is not kept, and so never matches a rule.
    pub fn from_json(v: &serde_json::Value) -> Option<ClaimValue> {
        match v {
            serde_json::Value::Array(items) => items
                .iter()
                .map(Scalar::from_json)
                .collect::<Option<Vec<_>>>()
                .map(ClaimValue::Many),
            other => Scalar::from_json(other).map(ClaimValue::One),
        }
    }

    fn contains_any(&self, wanted: &[Scalar]) -> bool {
        match self {
            ClaimValue::One(v) => wanted.contains(v),
            ClaimValue::Many(vs) => vs.iter().any(|v| wanted.contains(v)),
        }
    }

    /// The values, one or many.
    pub(crate) fn values(&self) -> &[Scalar] {
        match self {
            ClaimValue::One(v) => std::slice::from_ref(v),
            ClaimValue::Many(vs) => vs,
        }
    }
}

/// Claims kept in a session, by name.
pub type KeptClaims = [(String, ClaimValue)];

/// The claim named `name` among `kept`.
pub fn claim<'k>(kept: &'k KeptClaims, name: &str) -> Option<&'k ClaimValue> {
    kept.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// A route's `require`: every listed claim must match one of its values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimRule {
    /// Claim name and the values any one of which it must have.
    terms: Vec<(String, Vec<Scalar>)>,
    /// `acr` and `max_age`: how strong and how recent the login must be.
    step_up: Option<StepUp>,
}

/// A step-up rule (RFC 9470): the login's `acr` must be one of `acr` (when any is listed), and
/// its `auth_time` at most `max_age` seconds old (when set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepUp {
    pub acr: Vec<String>,
    pub max_age: Option<u64>,
}

impl StepUp {
    /// Whether a session with claims `kept` (its ID token's `acr` and `auth_time`) meets the
    /// rule at `now`.
    pub fn satisfied(&self, kept: &KeptClaims, now: u64) -> bool {
        let acr_ok = self.acr.is_empty()
            || matches!(claim(kept, "acr"), Some(ClaimValue::One(Scalar::Str(a))) if self.acr.contains(a));
        let age_ok = match self.max_age {
            None => true,
            // A provider's clock a little ahead of ours (a minute, as for ID tokens) is not a
            // login from the future: it would ask for a step-up again and again.
            Some(max) => matches!(
                claim(kept, "auth_time"),
                Some(ClaimValue::One(Scalar::Int(t))) if u64::try_from(*t).is_ok_and(|t| t <= now.saturating_add(CLOCK_LEEWAY_SECS) && now.saturating_sub(t) <= max)
            ),
        };
        acr_ok && age_ok
    }

    /// `acr_values` as a login asks for them: space-separated.
    pub fn acr_values(&self) -> String {
        self.acr.join(" ")
    }
}

/// How far ahead of ours a provider's clock may be (its `auth_time`).
const CLOCK_LEEWAY_SECS: u64 = 60;

/// `"90"`, `"90s"`, `"10m"`, `"1h"`, `"1d"`: seconds.
fn parse_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(unit)
}

impl ClaimRule {
    /// The step-up part of the rule, if it has one.
    pub fn step_up(&self) -> Option<&StepUp> {
        self.step_up.as_ref()
    }

    /// Whether a session with claims `kept` satisfies the rule.
    pub fn allows(&self, kept: &KeptClaims) -> bool {
        self.terms
            .iter()
            .all(|(name, wanted)| claim(kept, name).is_some_and(|v| v.contains_any(wanted)))
    }

    /// Whether the rule reads a claim the session did not look for at login (a rule added
    /// since): the session cannot be judged, and a new login would keep the claim.
    pub fn asks_unknown(&self, kept: &KeptClaims) -> bool {
        self.terms
            .iter()
            .any(|(name, _)| claim(kept, name).is_none())
    }

    /// The claim names the rule reads (what a session must keep): a step-up rule reads `acr`
    /// and `auth_time`.
    pub fn claim_names(&self) -> impl Iterator<Item = &str> {
        let step_up: &[&str] = match &self.step_up {
            Some(_) => &["acr", "auth_time"],
            None => &[],
        };
        self.terms
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(step_up.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty() && self.step_up.is_none()
    }
}

/// A value in a rule: a string, an integer or a boolean.
struct RuleScalar(Scalar);

/// What a rule's value may be, for error messages.
const RULE_VALUE: &str = "a string, an integer, a boolean, or a list of them";

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(RULE_VALUE)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom(format!("{v} is too large")))
    }
}

impl<'de> Deserialize<'de> for RuleScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(RuleScalar)
    }
}

/// A rule's value: one scalar or a non-empty list of them.
struct RuleValue(Vec<Scalar>);

impl<'de> Deserialize<'de> for RuleValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuleValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(RULE_VALUE)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RuleValue, E> {
                ScalarVisitor.visit_str(v).map(|s| RuleValue(vec![s]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RuleValue, E> {
                ScalarVisitor.visit_bool(v).map(|s| RuleValue(vec![s]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RuleValue, E> {
                ScalarVisitor.visit_i64(v).map(|s| RuleValue(vec![s]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RuleValue, E> {
                ScalarVisitor.visit_u64(v).map(|s| RuleValue(vec![s]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RuleValue, A::Error> {
                let mut out = Vec::new();
                while let Some(RuleScalar(item)) = seq.next_element()? {
                    out.push(item);
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "an empty list matches nothing; list at least one value",
                    ));
                }
                Ok(RuleValue(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ClaimRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = BTreeMap::<String, RuleValue>::deserialize(d)?;
        if map.is_empty() {
            return Err(de::Error::custom(
                "lists no claim; remove it or name at least one claim",
            ));
        }
        if let Some(name) = map.keys().find(|n| n.trim().is_empty()) {
            return Err(de::Error::custom(format!("{name:?} is not a claim name")));
        }
        let acr = match map.remove("acr") {
            None => None,
            Some(v) => Some(
                v.0.into_iter()
                    .map(|s| match s {
                        Scalar::Str(a) if !a.trim().is_empty() && !a.contains(' ') => Ok(a),
                        other => Err(de::Error::custom(format!(
                            "acr: {other:?} is not an authentication context class (a string without spaces)"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let max_age = match map.remove("max_age") {
            None => None,
            Some(v) => match v.0.as_slice() {
                [Scalar::Int(n)] if *n >= 0 => Some(*n as u64),
                [Scalar::Str(t)] => Some(parse_secs(t).ok_or_else(|| {
                    de::Error::custom(format!(
                        "max_age: {t:?} is not a duration (\"10m\", \"1h\", or seconds)"
                    ))
                })?),
                _ => {
                    return Err(de::Error::custom(
                        "max_age: one duration (\"10m\", \"1h\", or seconds)",
                    ))
                }
            },
        };
        if max_age == Some(0) {
            return Err(de::Error::custom(
                "max_age: 0 can never be met; at least 1s",
            ));
        }
        let step_up = (acr.is_some() || max_age.is_some()).then(|| StepUp {
            acr: acr.unwrap_or_default(),
            max_age,
        });
        Ok(ClaimRule {
            terms: map.into_iter().map(|(n, v)| (n, v.0)).collect(),
            step_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(toml_text: &str) -> Result<ClaimRule, String> {
        #[derive(Deserialize)]
        struct R {
            require: ClaimRule,
        }
        toml::from_str::<R>(toml_text)
            .map(|r| r.require)
            .map_err(|e| e.message().to_string())
    }

    fn kept(claims: serde_json::Value) -> Vec<(String, ClaimValue)> {
        claims
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| ClaimValue::from_json(v).map(|v| (k.clone(), v)))
            .collect()
    }

    #[test]
    fn acr_and_max_age_are_a_step_up_rule() {
        let r = rule(r#"require = { acr = ["urn:mfa", "urn:hw"], max_age = "10m" }"#).unwrap();
        let s = r.step_up().unwrap();
        assert_eq!(s.acr_values(), "urn:mfa urn:hw");
        assert_eq!(s.max_age, Some(600));
        assert!(r.allows(&[]), "no claim terms");
        let names: Vec<&str> = r.claim_names().collect();
        assert_eq!(names, ["acr", "auth_time"]);
        let now = 10_000;
        let session = |acr: &str, t: i64| kept(json!({ "acr": acr, "auth_time": t }));
        assert!(s.satisfied(&session("urn:mfa", now as i64 - 600), now));
        assert!(
            !s.satisfied(&session("urn:mfa", now as i64 - 601), now),
            "too old"
        );
        assert!(
            !s.satisfied(&session("urn:pwd", now as i64), now),
            "too weak"
        );
        assert!(
            !s.satisfied(&kept(json!({ "acr": "urn:mfa" })), now),
            "no auth_time"
        );
        assert!(
            s.satisfied(&session("urn:mfa", now as i64 + 5), now),
            "a provider clock a little ahead"
        );
        assert!(
            !s.satisfied(&session("urn:mfa", now as i64 + 61), now),
            "from the future"
        );
        assert!(rule(r#"require = { max_age = 0 }"#)
            .unwrap_err()
            .contains("max_age"));
        // Alone, with other claims, in seconds.
        let r = rule(r#"require = { max_age = 30, groups = "ops" }"#).unwrap();
        assert_eq!(r.step_up().unwrap().max_age, Some(30));
        assert!(r.step_up().unwrap().acr.is_empty());
        assert_eq!(
            r.claim_names().collect::<Vec<_>>(),
            ["groups", "acr", "auth_time"]
        );
        assert!(rule(r#"require = { max_age = "soon" }"#)
            .unwrap_err()
            .contains("max_age"));
        assert!(rule(r#"require = { acr = [1] }"#)
            .unwrap_err()
            .contains("acr"));
        assert!(rule(r#"require = { groups = "ops" }"#)
            .unwrap()
            .step_up()
            .is_none());
    }

    #[test]
    fn every_term_must_match_any_of_its_values() {
        let r = rule(r#"require = { groups = ["admin", "ops"], email_verified = true }"#).unwrap();
        let user = |groups: serde_json::Value, verified: serde_json::Value| {
            kept(json!({ "groups": groups, "email_verified": verified }))
        };
        assert!(r.allows(&user(json!(["staff", "ops"]), json!(true))));
        assert!(
            r.allows(&user(json!("admin"), json!(true))),
            "a single-valued claim"
        );
        assert!(!r.allows(&user(json!(["staff"]), json!(true))));
        assert!(!r.allows(&user(json!(["admin"]), json!(false))));
        assert!(
            !r.allows(&user(json!(["admin"]), json!("true"))),
            "types are not coerced"
        );
        assert!(
            !r.allows(&kept(json!({ "groups": ["admin"] }))),
            "a missing claim"
        );
        assert!(
            !r.allows(&user(json!(["Admin"]), json!(true))),
            "exact, case and all"
        );
        let r = rule(r#"require = { level = 3, tenant = "acme" }"#).unwrap();
        assert!(r.allows(&kept(json!({ "level": 3, "tenant": "acme" }))));
        assert!(
            !r.allows(&kept(json!({ "level": 3.0, "tenant": "acme" }))),
            "floats are not kept"
        );
        assert_eq!(r.claim_names().collect::<Vec<_>>(), ["level", "tenant"]);
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        for (text, says) in [
            ("require = {}", "lists no claim"),
            (r#"require = { groups = [] }"#, "empty list"),
            (
                r#"require = { groups = [["a"]] }"#,
                "a string, an integer, a boolean",
            ),
            (
                r#"require = { groups = { a = 1 } }"#,
                "a string, an integer, a boolean",
            ),
            (
                r#"require = { level = 1.5 }"#,
                "a string, an integer, a boolean",
            ),
            (r#"require = { "" = "x" }"#, "not a claim name"),
        ] {
            let e = rule(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn claims_that_cannot_be_compared_are_not_kept() {
        assert_eq!(ClaimValue::from_json(&json!({ "a": 1 })), None);
        assert_eq!(ClaimValue::from_json(&json!(["a", { "b": 1 }])), None);
        assert_eq!(ClaimValue::from_json(&json!(1.5)), None);
        assert_eq!(
            ClaimValue::from_json(&json!(["a", 2, false])),
            Some(ClaimValue::Many(vec![
                Scalar::Str("a".into()),
                Scalar::Int(2),
                Scalar::Bool(false)
            ]))
        );
    }
}

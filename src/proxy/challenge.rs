//! An upstream's step-up challenge (RFC 9470 §3): a `401` whose `WWW-Authenticate` says
//! `error="insufficient_user_authentication"` (under the `Bearer` or `DPoP` scheme), with the
//! `acr_values` and `max_age` the resource server wants. tollgate answers the SPA with the
//! same `step_up_required` JSON a route's own step-up rule gives, carrying those values and a
//! login link that asks for them, so the SPA has one thing to handle.

/// What an upstream's challenge asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StepUpChallenge {
    pub(crate) acr_values: Option<String>,
    pub(crate) max_age: Option<u64>,
    /// The challenge named `acr_values` or a `max_age` that `/login` would refuse: no login
    /// tollgate can link to satisfies it.
    pub(crate) unusable: bool,
}

/// The step-up challenge among `values` (the `WWW-Authenticate` fields of a `401`), if any.
pub(crate) fn step_up<'v>(values: impl Iterator<Item = &'v [u8]>) -> Option<StepUpChallenge> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(parse)
}

/// One `WWW-Authenticate` field: `Bearer error="…", acr_values="…", max_age=…`.
fn parse(field: &str) -> Option<StepUpChallenge> {
    let field = field.trim();
    let (scheme, params) = field.split_once(' ').unwrap_or((field, ""));
    if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("dpop") {
        return None;
    }
    let mut found = false;
    let mut out = StepUpChallenge::default();
    for (name, value) in params_of(params) {
        match name.to_ascii_lowercase().as_str() {
            "error" => found = value == "insufficient_user_authentication",
            // Only values `/login` takes, so that the link the SPA gets works; a challenge
            // with others is `unusable` (a plain login would not satisfy it either).
            "acr_values" => {
                out.acr_values = Some(value).filter(|v| {
                    crate::oidc::login::step_up_acr(Some(v)).is_ok_and(|list| !list.is_empty())
                });
                out.unusable |= out.acr_values.is_none();
            }
            "max_age" => {
                out.max_age = crate::oidc::login::step_up_max_age(Some(&value))
                    .ok()
                    .flatten();
                out.unusable |= out.max_age.is_none();
            }
            _ => {}
        }
    }
    found.then_some(out)
}

/// `name=value` and `name="quoted value"` pairs, comma-separated (RFC 9110 §11.2).
fn params_of(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',', '\t']);
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            value
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let value = rest[..end].trim().to_string();
            rest = &rest[end..];
            value
        };
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(field: &str) -> Option<StepUpChallenge> {
        step_up(std::iter::once(field.as_bytes()))
    }

    #[test]
    fn the_rfc_9470_examples() {
        assert_eq!(
            one(
                r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR""#
            ),
            Some(StepUpChallenge {
                acr_values: Some("myACR".into()),
                max_age: None,
                unusable: false
            })
        );
        assert_eq!(
            one(
                r#"Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5""#
            ),
            Some(StepUpChallenge {
                acr_values: None,
                max_age: Some(5),
                unusable: false
            })
        );
        assert_eq!(
            one(r#"DPoP error="insufficient_user_authentication",max_age=60,acr_values="a b""#),
            Some(StepUpChallenge {
                acr_values: Some("a b".into()),
                max_age: Some(60),
                unusable: false
            })
        );
    }

    #[test]
    fn other_challenges_are_not_step_up() {
        assert_eq!(one(r#"Bearer error="invalid_token""#), None);
        assert_eq!(
            one(r#"Basic realm="insufficient_user_authentication""#),
            None
        );
        assert_eq!(one("Bearer"), None);
        assert_eq!(
            one(r#"Bearer error="insufficient_user_authentication"#),
            Some(StepUpChallenge::default())
        );
        assert_eq!(
            one(
                r#"Bearer error="insufficient_user_authentication", max_age="99999999999", acr_values="a\\b""#
            ),
            Some(StepUpChallenge {
                unusable: true,
                ..StepUpChallenge::default()
            }),
            "values /login would refuse are left out, and the challenge is unusable"
        );
        assert_eq!(
            one(r#"Bearer error="insufficient_user_authentication", max_age="soon""#),
            Some(StepUpChallenge {
                unusable: true,
                ..StepUpChallenge::default()
            })
        );
    }
}

//! The provider chooser (`[server] provider_chooser = true`): `/login` without a provider, on a
//! host that picks none, lists the providers as links to `/login?provider=NAME`, keeping the
//! request's other parameters (`return_to`, `prompt`, a step-up's `acr_values` and `max_age`).

use super::providers::Providers;
use crate::reply::{escape, Reply};
use crate::request::Facts;

/// The chooser page for this `/login`.
pub(crate) fn page(providers: &Providers, facts: &Facts<'_>) -> Reply {
    let kept: Vec<(String, String)> = facts
        .query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "provider")
        .collect();
    let mut items = String::new();
    for oidc in providers.iter() {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("provider", &oidc.name);
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        items.push_str(&format!(
            "<li style=\"margin:.5rem 0\"><a href=\"/login?{}\">{}</a></li>",
            escape(&q.finish()),
            escape(&oidc.name)
        ));
    }
    Reply::page(
        200,
        "Sign in",
        &format!("<p>Choose where to sign in:</p><ul>{items}</ul>"),
    )
    .with_outcome("provider_chooser")
}

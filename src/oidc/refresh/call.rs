//! The provider call of a refresh: the token request, the new ID token's checks, a route
//! token kept, and what each provider answer means for the session.

use std::sync::Arc;

use super::outcome::{Job, RefreshOutcome};
use crate::oidc::client::Oidc;
use crate::oidc::token_client::TokenError;

impl Oidc {
    pub(super) async fn call_refresh(&self, refresh_token: &str, job: &Job) -> RefreshOutcome {
        let Some(provider) = self.provider() else {
            return RefreshOutcome::Unavailable;
        };
        let request_id = job.request_id.as_str();
        let audience = job.audience.as_deref();
        match self
            .tokens
            .refresh(
                provider.metadata.token_endpoint.as_str(),
                refresh_token,
                job.dpop.as_deref(),
                audience,
            )
            .await
        {
            Ok(mut tokens) => {
                let issued_at = crate::unix_now();
                if audience.is_some() {
                    // A route's token: the ID token stays the one the session keeps.
                    tokens.id_token = None;
                    let tokens = Arc::new(tokens);
                    self.keep_audience_token(job, &tokens, issued_at).await;
                    tracing::info!(
                        request_id,
                        rotated = tokens.refresh_token.is_some(),
                        "route token issued"
                    );
                    return RefreshOutcome::Refreshed(tokens, issued_at);
                }
                // A new ID token only replaces the logout hint once it passes the login's
                // checks (but the nonce) and names the same user (OpenID Connect Core §12.2);
                // otherwise the one from login stays. The refresh itself stands either way.
                if let Some(id_token) = tokens.id_token.take() {
                    let checked = self
                        .validate_id_token(
                            &id_token,
                            &provider,
                            None,
                            &tokens.access_token,
                            crate::unix_now(),
                        )
                        .await;
                    match checked {
                        Ok(claims) if claims.sub == job.sub => tokens.id_token = Some(id_token),
                        Ok(_) => tracing::warn!(
                            request_id,
                            "refresh: the new ID token names another subject; keeping the old one"
                        ),
                        Err(e) => tracing::warn!(
                            request_id,
                            error = %e,
                            "refresh: the new ID token did not validate; keeping the old one"
                        ),
                    }
                }
                tracing::info!(
                    request_id,
                    rotated = tokens.refresh_token.is_some(),
                    "access token refreshed"
                );
                RefreshOutcome::Refreshed(Arc::new(tokens), issued_at)
            }
            // Only `invalid_grant` says the refresh token itself is dead (RFC 6749 §5.2).
            // `invalid_client`, a rate limit or a firewall's 403 are the provider's or our
            // configuration's problem: the session is kept and the request answered 503.
            Err(TokenError::Provider { error, .. }) if error == "invalid_grant" => {
                tracing::info!(request_id, provider_error = %error, "refresh refused by the provider");
                RefreshOutcome::Rejected(error)
            }
            // A route's audience the grant does not cover (RFC 8707 §2, RFC 6749 §5.2).
            Err(TokenError::Provider { error, .. })
                if audience.is_some()
                    && (error == "invalid_target" || error == "invalid_scope") =>
            {
                tracing::info!(request_id, provider_error = %error, "the provider refused the route's audience");
                self.metrics.route_token("refused");
                self.keep_refusal(job);
                RefreshOutcome::Refused(error)
            }
            Err(TokenError::Provider { status, error }) => {
                tracing::error!(
                    request_id,
                    status,
                    provider_error = %error,
                    "refresh failed: the provider refused the client or the request; session kept"
                );
                RefreshOutcome::Unavailable
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "refresh failed: provider unavailable");
                RefreshOutcome::Unavailable
            }
        }
    }
}

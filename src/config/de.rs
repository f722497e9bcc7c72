//! Deserializers for the value types of the config file.
//!
//! serde gives each key its type while parsing, so a bad duration, URL, address or header name
//! is refused with the key it came from (`serde_path_to_error` adds the path, e.g.
//! `routes[1].upstream`) and nothing after this step handles raw strings. The messages say what
//! was expected; they quote the value, which is never a secret for these types.

use std::fmt;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderName;
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::Deserialize;
use url::Url;

/// A duration: `"30s"`, `"8h"`, `"1h 30m"`, or a number of seconds (bare or as a string, as
/// environment overrides write it).
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\" or \"8h\"")
        }
        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }
        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{secs} is negative; expected a duration")))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            let t = text.trim();
            if let Ok(secs) = t.parse::<u64>() {
                return Ok(Duration::from_secs(secs));
            }
            humantime::parse_duration(t).map_err(|e| {
                E::custom(format!(
                    "{text:?} is not a duration such as \"30s\" or \"8h\": {e}"
                ))
            })
        }
    }
    d.deserialize_any(V)
}

/// An absolute `http` or `https` URL with a host and without credentials.
#[derive(Debug, Clone)]
pub(crate) struct HttpUrl(pub Url);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_http_url(&text)
            .map(HttpUrl)
            .map_err(de::Error::custom)
    }
}

fn parse_http_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{value:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?} must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The value is not quoted: it holds a password.
        return Err("must not carry credentials in the URL".into());
    }
    Ok(url)
}

/// The issuer, parsed, and also kept as written: discovery documents and ID tokens must carry
/// that exact string (OpenID Connect Discovery §4.3), which the parsed URL may not reproduce.
#[derive(Debug, Clone)]
pub(crate) struct Issuer {
    pub url: Url,
    pub id: String,
}

impl<'de> Deserialize<'de> for Issuer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = parse_http_url(&text).map_err(de::Error::custom)?;
        Ok(Issuer {
            url,
            id: text.trim().to_string(),
        })
    }
}

/// An http(s) URL, checked, and kept exactly as written: a provider may compare it character
/// for character with what was registered there, and the parsed URL could differ (it gains a
/// `/` after a bare host).
#[derive(Debug, Clone)]
pub(crate) struct UrlAsWritten(pub String);

impl<'de> Deserialize<'de> for UrlAsWritten {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_http_url(&text).map_err(de::Error::custom)?;
        Ok(UrlAsWritten(text.trim().to_string()))
    }
}

/// A listen address: `"127.0.0.1:8080"`, `"[::]:8080"`, or a name (`"localhost:8080"`)
/// resolved once, here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Addr)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "{text:?} is not an address such as \"127.0.0.1:8080\" or \"[::]:8080\""
                ))
            })
    }
}

/// A header name, lower-cased.
pub(crate) fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let text = String::deserialize(d)?;
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| de::Error::custom(format!("{text:?} is not a valid header name")))
}

/// A list written as a TOML array, or as one string of comma-separated entries (how an
/// environment override writes it). Array entries keep their index in the error's key.
pub(crate) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list, or a string of comma-separated entries")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|item| T::deserialize(IntoDeserializer::<E>::into_deserializer(item)))
                .collect()
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V(PhantomData))
}

pub(crate) fn opt_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    list(d).map(Some)
}

/// A number or boolean that may also arrive as a string (from an environment override).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Native(T),
    Text(String),
}

pub(crate) fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    match Lenient::<T>::deserialize(d)? {
        Lenient::Native(v) => Ok(v),
        Lenient::Text(s) => s
            .trim()
            .parse::<T>()
            .map_err(|_| de::Error::custom(format!("invalid value {s:?}"))),
    }
}

pub(crate) fn opt_lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    lenient(d).map(Some)
}

// Defaults serde fills in (`#[serde(default = "…")]`), shared by the sections.

pub(crate) fn yes() -> bool {
    true
}

pub(crate) fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

pub(crate) fn bytes<const N: usize>() -> usize {
    N
}

pub(crate) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

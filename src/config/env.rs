//! `TOLLGATE__SECTION__KEY` environment overrides.
//!
//! Containers are configured through the environment more often than through files, so every
//! key of the file can be replaced by a variable: `TOLLGATE__OIDC__CLIENT_ID` sets
//! `[oidc] client_id`. Path segments are separated by double underscores and lower-cased; a
//! numeric segment indexes an array (`TOLLGATE__ROUTES__0__UPSTREAM`), and an index one past the
//! end appends a new table. Values are taken as strings, except a value that starts with `[` or
//! `{`, which is parsed as a TOML inline array or table. Overrides are applied to the parsed
//! document before it is checked, so they go through exactly the same validation as the file.

use toml::Value;

use super::error::ConfigError;

/// The prefix that marks a variable as a tollgate override.
pub(crate) const PREFIX: &str = "TOLLGATE__";

/// Applies every `TOLLGATE__*` variable of `vars` to `doc`.
pub(crate) fn apply_overrides<I>(doc: &mut Value, vars: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    // Sorted so that `ROUTES__2__…` is applied before `ROUTES__10__…` (appending in order):
    // numeric segments compare as numbers.
    vars.sort_by_cached_key(|(name, _)| {
        name.split("__")
            .map(|segment| match segment.parse::<usize>() {
                Ok(n) => (0, n, String::new()),
                Err(_) => (1, 0, segment.to_string()),
            })
            .collect::<Vec<_>>()
    });
    for (name, raw) in vars {
        let path: Vec<String> = name[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: name,
                problem: "empty path segment (use double underscores between names)".into(),
            });
        }
        let value = parse_value(&raw).map_err(|problem| ConfigError::Env {
            var: name.clone(),
            problem,
        })?;
        set_path(doc, &path, value).map_err(|problem| ConfigError::Env { var: name, problem })?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        // The parser's message only: its full text quotes the input, which may be a secret.
        let doc: toml::Table = toml::from_str(&format!("v = {raw}")).map_err(|e| {
            format!(
                "not a TOML inline array or table ({}; the value is not shown)",
                e.message()
            )
        })?;
        Ok(doc
            .get("v")
            .cloned()
            .unwrap_or(Value::String(String::new())))
    } else {
        Ok(Value::String(raw.to_string()))
    }
}

fn set_path(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((head, rest)) = path.split_first() else {
        *doc = value;
        return Ok(());
    };
    match doc {
        Value::Table(table) => {
            let slot = table.entry(head.clone()).or_insert_with(|| {
                if rest.first().is_some_and(|s| s.parse::<usize>().is_ok()) {
                    Value::Array(Vec::new())
                } else {
                    Value::Table(toml::Table::new())
                }
            });
            set_path(slot, rest, value)
        }
        Value::Array(items) => {
            let index: usize = head
                .parse()
                .map_err(|_| format!("`{head}` is not an array index"))?;
            if index == items.len() {
                items.push(Value::Table(toml::Table::new()));
            }
            let len = items.len();
            let slot = items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the end ({len} entries)"))?;
            set_path(slot, rest, value)
        }
        _ => Err(format!("`{head}` is inside a value that is not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Value {
        Value::Table(toml::from_str(s).unwrap())
    }

    #[test]
    fn sets_nested_keys_and_array_entries() {
        let mut d = doc("[oidc]\nclient_id = \"a\"\n[[routes]]\nprefix = \"/api\"\n");
        apply_overrides(
            &mut d,
            [
                ("TOLLGATE__OIDC__CLIENT_ID".to_string(), "12345".to_string()),
                ("TOLLGATE__ROUTES__0__PREFIX".into(), "/v2".into()),
                ("TOLLGATE__ROUTES__1__PREFIX".into(), "/".into()),
                (
                    "TOLLGATE__SERVER__LISTEN".into(),
                    "[\"127.0.0.1:1\"]".into(),
                ),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(d["oidc"]["client_id"].as_str(), Some("12345"));
        assert_eq!(d["routes"][0]["prefix"].as_str(), Some("/v2"));
        assert_eq!(d["routes"][1]["prefix"].as_str(), Some("/"));
        assert_eq!(d["server"]["listen"][0].as_str(), Some("127.0.0.1:1"));
    }

    #[test]
    fn array_entries_are_appended_in_numeric_order() {
        let mut d = doc("");
        let vars = (0..12)
            .rev()
            .map(|i| (format!("TOLLGATE__ROUTES__{i}__PREFIX"), format!("/r{i}")));
        apply_overrides(&mut d, vars).unwrap();
        let routes = d["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 12);
        assert_eq!(routes[10]["prefix"].as_str(), Some("/r10"));
    }

    #[test]
    fn a_bad_value_is_not_quoted_in_the_error() {
        let mut d = doc("");
        let e = apply_overrides(
            &mut d,
            [(
                "TOLLGATE__OIDC__CLIENT_SECRET".to_string(),
                "{s3cr3t-value".to_string(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("TOLLGATE__OIDC__CLIENT_SECRET"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn rejects_bad_index_and_names_variable() {
        let mut d = doc("[[routes]]\nprefix = \"/api\"\n");
        let err = apply_overrides(
            &mut d,
            [("TOLLGATE__ROUTES__5__PREFIX".to_string(), "/x".to_string())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("TOLLGATE__ROUTES__5__PREFIX"), "{err}");
    }
}

//! Chaos Toolkit tolerances: what value of a probe is acceptable.
//!
//! A probe produces an *output* (a JSON object) with a *primary* value: the status code of
//! an HTTP probe, the latency of a `latency_percentile` probe, `healthy` of a
//! `service_status` probe, `lost` of a `load` probe. Forms:
//!
//! * `200`, `true`, `"text"`: the primary value equals it;
//! * `[200, 204]`: the primary value is one of them;
//! * `{"type": "range", "range": [a, b], "target": "field"}`: the number (the primary
//!   value, or `target` of the output) is in `[a, b]`;
//! * `{"type": "jsonpath", "path": "$.a.b", "expect": v, "target": "body"}`: the value at
//!   `path` (in the HTTP body, or `target`, or the output) exists, and equals `expect` if
//!   given.
//!
//! Chaos Toolkit's `regex` and `probe` forms are not supported (a clear error says so).

use serde_json::Value;

/// A validated tolerance.
#[derive(Debug, Clone, PartialEq)]
pub enum Tolerance {
    /// The primary value equals this.
    Equals(Value),
    /// The primary value is one of these.
    OneOf(Vec<Value>),
    /// A number within bounds.
    Range {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (inclusive).
        high: f64,
        /// Output field holding the number (default: the primary value).
        target: Option<String>,
    },
    /// A JSON path that exists (and equals `expect`).
    JsonPath {
        /// The path (`$.a.b[0]`).
        path: Vec<PathStep>,
        /// Expected value, if any.
        expect: Option<Value>,
        /// Output field to apply it to (default: `body` for HTTP, else the output).
        target: Option<String>,
    },
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// Object key.
    Key(String),
    /// Array index.
    Index(usize),
}

impl Tolerance {
    /// Validates a tolerance as written.
    pub fn from_value(v: &Value) -> Result<Tolerance, String> {
        match v {
            Value::Bool(_) | Value::Number(_) | Value::String(_) => {
                Ok(Tolerance::Equals(v.clone()))
            }
            Value::Array(items) => {
                if items.is_empty() || items.iter().any(|i| i.is_object() || i.is_array()) {
                    return Err("a list tolerance holds one or more plain values".into());
                }
                Ok(Tolerance::OneOf(items.clone()))
            }
            Value::Object(o) => {
                let target = match o.get("target") {
                    None => None,
                    Some(Value::String(t)) => Some(t.clone()),
                    Some(_) => return Err("'target' must be a string".into()),
                };
                match o.get("type").and_then(Value::as_str) {
                    Some("range") => {
                        let r = o.get("range").and_then(Value::as_array);
                        let bounds: Option<Vec<f64>> =
                            r.map(|r| r.iter().filter_map(Value::as_f64).collect());
                        match bounds.as_deref() {
                            Some([low, high]) if low <= high && r.is_some_and(|r| r.len() == 2) => {
                                Ok(Tolerance::Range {
                                    low: *low,
                                    high: *high,
                                    target,
                                })
                            }
                            _ => Err(
                                "a range tolerance needs \"range\": [low, high] with low ≤ high"
                                    .into(),
                            ),
                        }
                    }
                    Some("jsonpath") => {
                        let path = o
                            .get("path")
                            .and_then(Value::as_str)
                            .ok_or("a jsonpath tolerance needs \"path\"")?;
                        Ok(Tolerance::JsonPath {
                            path: parse_json_path(path)?,
                            expect: o.get("expect").cloned(),
                            target,
                        })
                    }
                    Some(other @ ("regex" | "probe")) => Err(format!(
                        "the '{other}' tolerance is not supported; use a value, a list, range or jsonpath"
                    )),
                    Some(other) => Err(format!(
                        "unknown tolerance type '{other}'; expected range or jsonpath"
                    )),
                    None => Err("an object tolerance needs \"type\": range or jsonpath".into()),
                }
            }
            Value::Null => Err("a tolerance cannot be null".into()),
        }
    }

    /// Whether a probe's `output` (with its `primary` value) is acceptable. `http` says the
    /// output is an HTTP probe's (JSON paths then default to its body).
    pub fn accepts(&self, primary: &Value, output: &Value, http: bool) -> bool {
        let pick = |target: &Option<String>| -> Option<&Value> {
            match target {
                Some(t) => output.get(t),
                None => Some(primary),
            }
        };
        match self {
            Tolerance::Equals(want) => same(primary, want),
            Tolerance::OneOf(items) => items.iter().any(|w| same(primary, w)),
            Tolerance::Range { low, high, target } => pick(target)
                .and_then(Value::as_f64)
                .is_some_and(|x| *low <= x && x <= *high),
            Tolerance::JsonPath {
                path,
                expect,
                target,
            } => {
                let root = match target {
                    Some(t) => output.get(t),
                    None if http => output.get("body"),
                    None => Some(output),
                };
                let found = root.and_then(|r| follow(r, path));
                match (found, expect) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(want)) => same(v, want),
                }
            }
        }
    }
}

/// Numbers compare by value (`200` equals `200.0`), everything else structurally.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn follow<'a>(mut v: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    for step in path {
        v = match step {
            PathStep::Key(k) => v.get(k)?,
            PathStep::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// `$.a.b[0].c`, `a.b`, `$["a b"]`-free subset of JSONPath.
pub fn parse_json_path(path: &str) -> Result<Vec<PathStep>, String> {
    let p = path.trim();
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    for part in p.split('.').filter(|s| !s.is_empty()) {
        let (key, rest) = part
            .find('[')
            .map_or((part, ""), |i| (&part[..i], &part[i..]));
        if !key.is_empty() {
            steps.push(PathStep::Key(key.to_owned()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            let n = idx
                .strip_suffix(']')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!("bad JSON path '{path}': only .key and [index] are supported")
                })?;
            steps.push(PathStep::Index(n));
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: Value) -> Tolerance {
        Tolerance::from_value(&v).expect("valid tolerance")
    }

    #[test]
    fn forms() {
        let http = json!({"status": 200, "body": {"status": "ok", "items": [{"n": 3}]}});
        assert!(t(json!(200)).accepts(&json!(200), &http, true));
        assert!(!t(json!(200)).accepts(&json!(503), &http, true));
        assert!(t(json!([200, 204])).accepts(&json!(204), &http, true));
        assert!(
            t(json!({"type": "jsonpath", "path": "$.status", "expect": "ok"})).accepts(
                &json!(200),
                &http,
                true
            )
        );
        assert!(
            t(json!({"type": "jsonpath", "path": "items[0].n", "expect": 3})).accepts(
                &json!(200),
                &http,
                true
            )
        );
        assert!(
            !t(json!({"type": "jsonpath", "path": "$.missing"})).accepts(&json!(200), &http, true)
        );
        let lat = json!({"latency_ms": 12.5, "errors": 0});
        assert!(t(json!({"type": "range", "range": [0, 50]})).accepts(&json!(12.5), &lat, false));
        assert!(!t(json!({"type": "range", "range": [0, 10]})).accepts(&json!(12.5), &lat, false));
        assert!(
            t(json!({"type": "range", "range": [0, 0], "target": "errors"})).accepts(
                &json!(12.5),
                &lat,
                false
            )
        );
        assert!(t(json!(true)).accepts(&json!(true), &json!({}), false));
    }

    #[test]
    fn bad_tolerances_say_why() {
        for bad in [
            json!(null),
            json!([]),
            json!({"type": "regex", "pattern": "x"}),
            json!({"type": "range", "range": [5, 1]}),
            json!({"type": "range", "range": [1]}),
            json!({"type": "jsonpath"}),
            json!({"type": "jsonpath", "path": "a[x]"}),
            json!({"range": [1, 2]}),
        ] {
            assert!(Tolerance::from_value(&bad).is_err(), "{bad} accepted");
        }
    }
}

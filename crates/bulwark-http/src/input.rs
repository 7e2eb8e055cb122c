//! Reading JSON numbers as integers the way JSON Schema (and so every OpenAPI client)
//! counts them: `907` and `907.0` are the same integer; `907.5`, a string or a number
//! beyond ±2^53 (where a float no longer names one integer) is not an integer.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The largest magnitude a JSON number holds exactly as a float.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// `v` as an integer, if it is one.
pub fn as_integer(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // The cast is exact: `f` is whole and within ±2^53.
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

/// For `#[serde(deserialize_with = "bulwark_http::input::integer")]` on an `i64` field.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Value::deserialize(d)?;
    as_integer(&v).ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_are_integers_and_nothing_else_is() {
        assert_eq!(as_integer(&json!(907)), Some(907));
        assert_eq!(as_integer(&json!(907.0)), Some(907));
        assert_eq!(as_integer(&json!(-3.0)), Some(-3));
        assert_eq!(as_integer(&json!(0.5)), None);
        assert_eq!(as_integer(&json!(1e300)), None);
        assert_eq!(as_integer(&json!(u64::MAX)), None);
        assert_eq!(as_integer(&json!("7")), None);
        assert_eq!(as_integer(&json!(null)), None);
    }
}

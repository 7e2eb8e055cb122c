//! Finds the line of a value in JSON text from its path (`method[1].provider.arguments`),
//! so that an error found after parsing (an unknown service, a bad TTL) still names the
//! line of the experiment file it comes from.

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Parses `a.b[2].c` (the form `serde_path_to_error` prints) into segments. `.` alone
/// (the root) is the empty path.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part
            .find('[')
            .map_or((part, ""), |i| (&part[..i], &part[i..]));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_owned()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                segs.push(Seg::Index(i));
            }
        }
    }
    segs
}

/// The 1-based line where the value at `path` starts in `text`, or the deepest ancestor
/// that exists (a missing field is reported at its parent object).
pub fn line_of(text: &str, path: &[Seg]) -> usize {
    let b = text.as_bytes();
    let mut pos = skip_ws(b, 0);
    for seg in path {
        match find_child(b, pos, seg) {
            Some(p) => pos = p,
            None => break,
        }
    }
    1 + b[..pos.min(b.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `i` (`b[i] == '"'`).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// End (exclusive) of the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            j
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            j
        }
    }
}

/// Start of the child `seg` of the container value starting at `i`.
fn find_child(b: &[u8], i: usize, seg: &Seg) -> Option<usize> {
    match (b.get(i)?, seg) {
        (b'{', Seg::Key(want)) => {
            let mut j = skip_ws(b, i + 1);
            while j < b.len() && b[j] == b'"' {
                let end = skip_string(b, j);
                let key = serde_json::from_slice::<String>(&b[j..end]).ok()?;
                j = skip_ws(b, end);
                if b.get(j) != Some(&b':') {
                    return None;
                }
                j = skip_ws(b, j + 1);
                if &key == want {
                    return Some(j);
                }
                j = skip_ws(b, skip_value(b, j));
                if b.get(j) == Some(&b',') {
                    j = skip_ws(b, j + 1);
                }
            }
            None
        }
        (b'[', Seg::Index(want)) => {
            let mut j = skip_ws(b, i + 1);
            let mut n = 0;
            while j < b.len() && b[j] != b']' {
                if n == *want {
                    return Some(j);
                }
                j = skip_ws(b, skip_value(b, j));
                if b.get(j) == Some(&b',') {
                    j = skip_ws(b, j + 1);
                }
                n += 1;
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
  "title": "t",
  "method": [
    {"name": "a"},
    {
      "name": "b, \"quoted\" [x]",
      "provider": {
        "arguments": {"service": "db_g9"}
      }
    }
  ]
}"#;

    #[test]
    fn paths_parse_like_serde_path_to_error_prints_them() {
        assert_eq!(
            parse_path("method[1].provider"),
            vec![
                Seg::Key("method".into()),
                Seg::Index(1),
                Seg::Key("provider".into())
            ]
        );
        assert!(parse_path(".").is_empty());
    }

    #[test]
    fn finds_lines_of_nested_values_and_falls_back_to_the_parent() {
        assert_eq!(line_of(DOC, &parse_path("title")), 2);
        assert_eq!(line_of(DOC, &parse_path("method[0]")), 4);
        assert_eq!(line_of(DOC, &parse_path("method[1].name")), 6);
        assert_eq!(
            line_of(DOC, &parse_path("method[1].provider.arguments.service")),
            8
        );
        assert_eq!(line_of(DOC, &parse_path("method[1].provider.missing")), 7);
        assert_eq!(line_of(DOC, &[]), 1);
    }
}

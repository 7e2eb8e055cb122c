//! Settings for Bulwark services (SPEC CAP-12).
//!
//! A setting has one name, the environment-variable name (`NETWORK_TIMEOUT_SEC`), used
//! everywhere: in the environment, in `.env`, in a TOML config file (same names, any case,
//! optionally under a `[bulwark]` table) and in error messages. Precedence, highest first:
//! command-line flags (applied with [`Settings::set`]), the process environment, `.env` in
//! the working directory, the config file, the service's default.
//!
//! Nothing here writes to the process environment: the merged view is a plain map, so
//! reading settings has no global side effects (and no `unsafe` `set_var`).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A setting that is missing or malformed. The message names the setting, so an operator
/// knows what to fix: `invalid setting NETWORK_TIMEOUT_SEC="abc": expected seconds…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot be used.
    #[error("invalid setting {setting}={value:?}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: String,
        /// The offending value (secrets are redacted by the caller).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A required setting is absent.
    #[error("missing setting {setting}: {reason}")]
    Missing {
        /// The setting's name.
        setting: String,
        /// Why it is required.
        reason: String,
    },
    /// A config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid-value error for `setting`.
    pub fn invalid(setting: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Where a setting's value came from; shown by `bulwark … --print-config` style output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The process environment.
    Env,
    /// The `.env` file.
    DotEnv,
    /// The TOML config file.
    File,
}

/// The merged settings of one process.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Setting name (upper case) → (value, where it came from).
    vars: BTreeMap<String, (String, Source)>,
}

impl Settings {
    /// Loads the process environment, `.env` from the working directory (if present) and
    /// the TOML file at `config_file` (if given).
    pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(path) = config_file {
            s.merge_toml_file(path)?;
        }
        s.merge_dotenv(Path::new(".env"))?;
        for (k, v) in std::env::vars() {
            s.vars.insert(k.to_ascii_uppercase(), (v, Source::Env));
        }
        Ok(s)
    }

    /// What a service's command line starts from: the config file named by `--config` (or
    /// `BULWARK_CONFIG`), `.env` and the environment, loaded as by [`Settings::load`], then
    /// each flag that was given (`(setting name, value)`) on top of them.
    pub fn for_command_line(
        config_flag: Option<&Path>,
        flags: &[(&str, &Option<String>)],
    ) -> Result<Settings, ConfigError> {
        let file = config_flag
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("BULWARK_CONFIG").map(std::path::PathBuf::from));
        let mut s = Settings::load(file.as_deref())?;
        for (name, value) in flags {
            if let Some(v) = value {
                s.set(name, v.clone());
            }
        }
        Ok(s)
    }

    /// Settings from explicit pairs only (tests, embedding).
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.vars
                .insert(k.as_ref().to_ascii_uppercase(), (v.into(), Source::Env));
        }
        s
    }

    fn merge_dotenv(&mut self, path: &Path) -> Result<(), ConfigError> {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(e) if e.not_found() => return Ok(()),
            Err(e) => {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        for item in iter {
            let (k, v) = item.map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            self.vars
                .insert(k.to_ascii_uppercase(), (v, Source::DotEnv));
        }
        Ok(())
    }

    fn merge_toml_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
        let table = match table.get("bulwark") {
            Some(toml::Value::Table(inner)) => inner.clone(),
            _ => table,
        };
        for (k, v) in table {
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => {
                    return Err(file_err(format!(
                        "setting {k}: unsupported value {other} (use a string, number, boolean or list)"
                    )));
                }
            };
            self.vars
                .insert(k.to_ascii_uppercase(), (value, Source::File));
        }
        Ok(())
    }

    /// Overrides a setting with a command-line flag's value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars
            .insert(name.to_ascii_uppercase(), (value.into(), Source::Flag));
    }

    /// The raw value of a setting, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|(v, _)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// Where a setting came from, if it is set.
    pub fn source(&self, name: &str) -> Option<Source> {
        self.vars.get(name).map(|(_, s)| *s)
    }

    /// A setting parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::invalid(name, raw, e.to_string())),
        }
    }

    /// A positive integer setting within `range`, or `default` when unset.
    pub fn int_in<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let v = self.parse_or(name, default)?;
        if !range.contains(&v) {
            return Err(ConfigError::invalid(
                name,
                &v.to_string(),
                format!("expected a value from {} to {}", range.start(), range.end()),
            ));
        }
        Ok(v)
    }

    /// A duration given in (possibly fractional) seconds, like `NETWORK_TIMEOUT_SEC=0.2`;
    /// must be positive, finite and at most `max`.
    pub fn seconds_or(
        &self,
        name: &str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        let reason = || {
            format!(
                "expected a positive number of seconds up to {} (e.g. 0.2)",
                max.as_secs_f64()
            )
        };
        let secs: f64 = raw
            .trim()
            .parse()
            .map_err(|_| ConfigError::invalid(name, raw, reason()))?;
        if !secs.is_finite() || secs <= 0.0 || secs > max.as_secs_f64() {
            return Err(ConfigError::invalid(name, raw, reason()));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// `LOG_LEVEL` (default INFO); the one place any command reads it.
    pub fn log_level(&self) -> Result<LogLevel, ConfigError> {
        self.parse_or("LOG_LEVEL", LogLevel::Info)
    }

    /// A required setting.
    pub fn required(&self, name: &str, why: &str) -> Result<&str, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing {
            setting: name.to_string(),
            reason: why.to_string(),
        })
    }
}

/// The log level (`LOG_LEVEL`, case-insensitive; Python's names `WARNING` and `CRITICAL`
/// are accepted, as the seeds use them). Read in one place, [`Settings::log_level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything, dependencies' chatter aside.
    Trace,
    /// Routine events too (health checks, successful shop reads).
    Debug,
    /// The default.
    #[default]
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The `tracing` directive for this level (`info`).
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TRACE" => Ok(LogLevel::Trace),
            "DEBUG" => Ok(LogLevel::Debug),
            "INFO" => Ok(LogLevel::Info),
            "WARN" | "WARNING" => Ok(LogLevel::Warn),
            "ERROR" | "CRITICAL" => Ok(LogLevel::Error),
            _ => Err("expected one of DEBUG, INFO, WARNING, ERROR".to_string()),
        }
    }
}

/// The deployment environment (`ENVIRONMENT=development|production`): production refuses
/// development conveniences such as a missing or example `SECRET_KEY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    /// Local use: insecure defaults are allowed, with a warning.
    #[default]
    Development,
    /// Production: every secret must be set explicitly.
    Production,
}

impl FromStr for Environment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Environment::Development),
            "production" | "prod" => Ok(Environment::Production),
            _ => Err("expected development or production".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting() {
        let s = Settings::from_pairs([
            ("NETWORK_TIMEOUT_SEC", "abc"),
            ("CB_FAILURE_THRESHOLD", "0"),
        ]);
        let e = s
            .seconds_or(
                "NETWORK_TIMEOUT_SEC",
                Duration::from_millis(200),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(e.to_string().contains("NETWORK_TIMEOUT_SEC"), "{e}");
        let e = s
            .int_in("CB_FAILURE_THRESHOLD", 3u32, 1..=1000)
            .unwrap_err();
        assert!(e.to_string().contains("CB_FAILURE_THRESHOLD"), "{e}");
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        let max = Duration::from_secs(60);
        let s = Settings::from_pairs([("A", "0.2"), ("B", "-1"), ("C", "inf"), ("D", "0")]);
        assert_eq!(s.seconds_or("A", max, max), Ok(Duration::from_millis(200)));
        for k in ["B", "C", "D"] {
            assert!(s.seconds_or(k, max, max).is_err(), "{k}");
        }
        assert_eq!(
            s.seconds_or("UNSET", Duration::from_secs(1), max),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn log_levels_accept_python_names_and_refuse_others() {
        let level = |v: &str| Settings::from_pairs([("LOG_LEVEL", v)]).log_level();
        assert_eq!(level("warning"), Ok(LogLevel::Warn));
        assert_eq!(level("critical"), Ok(LogLevel::Error));
        assert_eq!(Settings::default().log_level(), Ok(LogLevel::Info));
        let e = level("LOUD").unwrap_err().to_string();
        assert!(e.contains("LOG_LEVEL"), "{e}");
    }

    #[test]
    fn flags_override_and_empty_means_unset() {
        let mut s = Settings::from_pairs([("MODE", "ap"), ("EMPTY", "  ")]);
        s.set("mode", "cp");
        assert_eq!(s.get("MODE"), Some("cp"));
        assert_eq!(s.source("MODE"), Some(Source::Flag));
        assert_eq!(s.get("EMPTY"), None);
    }

    #[test]
    fn toml_file_uses_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.toml");
        std::fs::write(
            &path,
            "[bulwark]\nmode = \"cp\"\nnetwork_timeout_sec = 0.5\nreplicas = [\"db_g1=127.0.0.1:6401\", \"db_g2=127.0.0.1:6402\"]\n",
        )
        .unwrap();
        let mut s = Settings::default();
        s.merge_toml_file(&path).unwrap();
        assert_eq!(s.get("MODE"), Some("cp"));
        assert_eq!(s.get("NETWORK_TIMEOUT_SEC"), Some("0.5"));
        assert_eq!(
            s.get("REPLICAS"),
            Some("db_g1=127.0.0.1:6401,db_g2=127.0.0.1:6402")
        );
        std::fs::write(&path, "mode = [").unwrap();
        let e = Settings::default().merge_toml_file(&path).unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }));
    }
}

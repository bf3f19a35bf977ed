//! How a setting is declared once and becomes a TOML key, a flag, a
//! `STARLING_…` variable, a default and a documented entry.
//!
//! `settings!` declares one table of settings: a struct whose fields are
//! the table's keys (doc comment: the documentation, `= value`: the
//! default). The struct derives serde (the TOML file) and `JsonSchema`
//! (the documentation, and the operator's CRD); the macro adds its
//! `Default` and the [`Table`] impl the command line is built from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// One setting as the command line and the documentation see it.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The TOML table, `limits` in `[limits]`.
    pub table: &'static str,
    /// The key within the table.
    pub key: &'static str,
    /// The long flag, without `--`; `STARLING_` and it, upper-cased with
    /// `_` for `-`, is the environment variable.
    pub flag: String,
    /// Another flag that means the same (an older spelling).
    pub alias: Option<&'static str>,
    /// Its value is a secret: `--help` does not print what the
    /// environment holds.
    pub secret: bool,
    /// A list: the flag repeats, or takes comma-separated values.
    pub many: bool,
    /// What `--help` calls the value.
    pub value_name: &'static str,
}

impl Setting {
    /// A setting of type `T` in `table`. Its flag is `flag_prefix` and the
    /// key with `-` for `_`, unless `options` has `flag("…")`; `options`
    /// may also hold `alias("…")` and `secret`.
    pub fn new<T: FlagValue>(
        table: &'static str,
        key: &'static str,
        flag_prefix: &str,
        options: &[(&'static str, Option<&'static str>)],
    ) -> Setting {
        let option = |name: &str| options.iter().find(|(n, _)| *n == name);
        let flag = match option("flag") {
            Some((_, Some(flag))) => (*flag).to_string(),
            _ => format!("{flag_prefix}{}", key.replace('_', "-")),
        };
        let value_name = if key.ends_with("_bytes") {
            "BYTES"
        } else if key.ends_with("_secs") {
            "SECS"
        } else if key.ends_with("_ms") {
            "MS"
        } else {
            T::VALUE_NAME
        };
        Setting {
            table,
            key,
            flag,
            alias: option("alias").and_then(|(_, alias)| *alias),
            secret: option("secret").is_some(),
            many: T::MANY,
            value_name,
        }
    }

    /// The environment variable that sets it.
    pub fn env(&self) -> String {
        format!("STARLING_{}", self.flag.replace('-', "_").to_uppercase())
    }

    /// `table.key`: how errors and the documentation name it.
    pub fn path(&self) -> String {
        format!("{}.{}", self.table, self.key)
    }
}

/// One table of settings (made by `settings!`).
pub trait Table: Default + serde::Serialize + schemars::JsonSchema {
    /// Its name in the TOML file.
    const TABLE: &'static str;
    /// Its settings, in declaration order.
    fn settings() -> Vec<Setting>;
    /// Sets each setting `given` has a value for (a flag or an environment
    /// variable), or names the key whose value does not parse, and why.
    fn apply(
        &mut self,
        given: &dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Result<(), (&'static str, String)>;
}

/// A type a setting can have, read from the text of a flag or variable.
pub trait FlagValue: Sized {
    /// What `--help` calls it.
    const VALUE_NAME: &'static str;
    /// A list (repeated flag, or comma-separated).
    const MANY: bool = false;
    /// The value of `texts` (one text unless `MANY`).
    fn parse_flag(texts: &[String]) -> Result<Self, String>;
}

/// The one text of a single-valued flag.
fn single(texts: &[String]) -> Result<&str, String> {
    match texts {
        [text] => Ok(text),
        _ => Err(format!("expected one value, got {}", texts.len())),
    }
}

macro_rules! flag_value_from_str {
    ($($ty:ty => $name:literal),* $(,)?) => {$(
        impl FlagValue for $ty {
            const VALUE_NAME: &'static str = $name;
            fn parse_flag(texts: &[String]) -> Result<Self, String> {
                let text = single(texts)?;
                <$ty>::from_str(text).map_err(|error| format!("{text:?}: {error}"))
            }
        }
    )*};
}

flag_value_from_str!(
    u16 => "N",
    u32 => "N",
    u64 => "N",
    usize => "N",
    bool => "BOOL",
    String => "TEXT",
    SocketAddr => "HOST:PORT",
    PathBuf => "FILE",
);

impl<T: FlagValue> FlagValue for Option<T> {
    const VALUE_NAME: &'static str = T::VALUE_NAME;
    fn parse_flag(texts: &[String]) -> Result<Self, String> {
        T::parse_flag(texts).map(Some)
    }
}

impl<T: FlagValue> FlagValue for Vec<T> {
    const VALUE_NAME: &'static str = T::VALUE_NAME;
    const MANY: bool = true;
    fn parse_flag(texts: &[String]) -> Result<Self, String> {
        texts
            .iter()
            .map(|text| T::parse_flag(std::slice::from_ref(text)))
            .collect()
    }
}

/// A `FlagValue` for an enum of unit variants, read by its serde name (the
/// same word as in the TOML file).
macro_rules! flag_value_by_name {
    ($ty:ty, $name:literal) => {
        impl $crate::config::settings::FlagValue for $ty {
            const VALUE_NAME: &'static str = $name;
            fn parse_flag(texts: &[String]) -> Result<Self, String> {
                use serde::Deserialize;
                let text = match texts {
                    [text] => text.as_str(),
                    _ => return Err(format!("expected one value, got {}", texts.len())),
                };
                let words = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
                <$ty>::deserialize(words).map_err(|error| error.to_string())
            }
        }
    };
}
pub(crate) use flag_value_by_name;

/// Declares one table of settings; see the module documentation.
///
/// ```text
/// settings! {
///     /// What the table is for.
///     pub struct Limits in "limits" {
///         /// Most simultaneous client connections.
///         max_connections: usize = 100_000,
///         /// The etcd endpoints.
///         endpoints: Vec<String> = Vec::new() => flag("etcd"),
///     }
/// }
/// ```
///
/// `flags "prefix-"` after the table name puts a prefix before every flag
/// of the table; `=> flag("…")`, `alias("…")` and `secret` after a default
/// change one setting's flag.
macro_rules! settings {
    (
        $(#[$table_meta:meta])*
        pub struct $table:ident in $name:literal $(flags $prefix:literal)? {
            $(
                $(#[$meta:meta])*
                $key:ident : $ty:ty = $default:expr $(=> $($option:ident $(($value:literal))?)+)?
            ),* $(,)?
        }
    ) => {
        $(#[$table_meta])*
        #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(default, deny_unknown_fields)]
        pub struct $table {
            $( $(#[$meta])* pub $key: $ty, )*
        }

        impl Default for $table {
            fn default() -> Self {
                $table { $( $key: $default, )* }
            }
        }

        impl $crate::config::settings::Table for $table {
            const TABLE: &'static str = $name;

            fn settings() -> Vec<$crate::config::settings::Setting> {
                let prefix: &str = $crate::config::settings::settings!(@prefix $($prefix)?);
                vec![$(
                    $crate::config::settings::Setting::new::<$ty>(
                        $name,
                        stringify!($key),
                        prefix,
                        &[$($( (stringify!($option), $crate::config::settings::settings!(@value $($value)?)) ),+)?],
                    ),
                )*]
            }

            fn apply(
                &mut self,
                given: &dyn Fn(&str) -> Option<Vec<String>>,
            ) -> Result<(), (&'static str, String)> {
                $(
                    if let Some(texts) = given(stringify!($key)) {
                        self.$key = <$ty as $crate::config::settings::FlagValue>::parse_flag(&texts)
                            .map_err(|problem| (stringify!($key), problem))?;
                    }
                )*
                Ok(())
            }
        }
    };
    (@prefix) => { "" };
    (@prefix $prefix:literal) => { $prefix };
    (@value) => { None };
    (@value $value:literal) => { Some($value) };
}
pub(crate) use settings;

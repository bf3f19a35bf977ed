//! The documentation of every setting, made from its declaration (its doc
//! comment, through the JSON Schema) and its default: the help of each
//! flag, the reference section of docs/configuration.md and
//! starling.example.toml. A test keeps both files equal to what this makes
//! (`STARLING_BLESS=1 cargo test -p starling-broker config::reference`
//! writes them).

use std::collections::HashMap;

use serde_json::Value;

use super::settings::Setting;
use super::{Config, all_settings};

/// Where the generated part of docs/configuration.md begins and ends.
pub const REFERENCE_BEGIN: &str = "<!-- reference: generated from broker/src/config/tables.rs -->";
pub const REFERENCE_END: &str = "<!-- end of reference -->";

/// Each setting's documentation by `table.key`, and each table's by its
/// name.
pub fn descriptions() -> HashMap<String, String> {
    schema_texts("description")
        .into_iter()
        .filter_map(|(path, value)| Some((path, unwrap_lines(value.as_str()?))))
        .collect()
}

/// The example a setting's declaration gives (for one that is unset by
/// default), by `table.key`, as TOML.
fn examples() -> HashMap<String, String> {
    schema_texts("examples")
        .into_iter()
        .filter_map(|(path, value)| {
            let first = value.as_array()?.first()?.clone();
            let value = toml::Value::try_from(first).ok()?;
            Some((path, value.to_string()))
        })
        .collect()
}

/// The `field` of every table's and every setting's schema, by name and
/// by `table.key`.
fn schema_texts(field: &str) -> HashMap<String, Value> {
    let schema = Config::json_schema();
    let root = schema.as_value();
    let mut out = HashMap::new();
    let Some(tables) = root.get("properties").and_then(Value::as_object) else {
        return out;
    };
    for (table, property) in tables {
        let Some(definition) = resolve(root, property) else {
            continue;
        };
        if let Some(value) = definition.get(field) {
            out.insert(table.clone(), value.clone());
        }
        let Some(keys) = definition.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (key, property) in keys {
            if let Some(value) = property.get(field) {
                out.insert(format!("{table}.{key}"), value.clone());
            }
        }
    }
    out
}

/// The definition a `$ref` property points at.
fn resolve<'a>(root: &'a Value, property: &'a Value) -> Option<&'a Value> {
    match property.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next()?;
            root.get("$defs")?.get(name)
        }
        None => Some(property),
    }
}

/// Doc comments arrive with their line breaks; the reference wraps itself.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Each table's defaults as TOML values, by `table.key`; a setting whose
/// default is "unset" has none.
fn defaults() -> HashMap<String, toml::Value> {
    let mut out = HashMap::new();
    let Ok(toml::Value::Table(root)) = toml::Value::try_from(Config::default()) else {
        return out;
    };
    for (table, values) in root {
        if let toml::Value::Table(values) = values {
            for (key, value) in values {
                out.insert(format!("{table}.{key}"), value);
            }
        }
    }
    out
}

/// What the reference says of a default, for a person.
fn default_text(setting: &Setting, value: Option<&toml::Value>) -> String {
    match value {
        None => "unset".to_string(),
        Some(toml::Value::String(text)) if text.is_empty() => "empty".to_string(),
        Some(toml::Value::Array(items)) if items.is_empty() => "none".to_string(),
        Some(toml::Value::Integer(n)) if setting.key.ends_with("_bytes") && *n >= 1 << 20 => {
            format!("{n} ({} MiB)", n >> 20)
        }
        Some(value) => value.to_string(),
    }
}

/// The reference section of docs/configuration.md, markers included.
pub fn reference_markdown() -> String {
    let docs = descriptions();
    let defaults = defaults();
    let mut out = format!("{REFERENCE_BEGIN}\n");
    let mut table = "";
    for setting in all_settings() {
        if setting.table != table {
            table = setting.table;
            out.push_str(&format!("\n### `[{table}]`\n\n"));
            if let Some(text) = docs.get(table) {
                out.push_str(&format!("{text}\n\n"));
            }
            out.push_str("| key | flag, variable | default | what it does |\n|---|---|---|---|\n");
        }
        let path = setting.path();
        let default = default_text(&setting, defaults.get(&path));
        let mut flags = format!("`--{}`", setting.flag);
        if let Some(alias) = setting.alias {
            flags.push_str(&format!(" (or `--{alias}`)"));
        }
        let text = docs.get(&path).map(String::as_str).unwrap_or("");
        out.push_str(&format!(
            "| `{}` | {flags}, `{}` | {} | {} |\n",
            setting.key,
            setting.env(),
            default,
            text.replace('|', "\\|").replace('\n', " ")
        ));
    }
    out.push_str(&format!("\n{REFERENCE_END}\n"));
    out
}

/// starling.example.toml: every table and key with its documentation as
/// comments and its default as the value (commented out when unset).
pub fn example_toml() -> String {
    let docs = descriptions();
    let defaults = defaults();
    let examples = examples();
    let mut out = String::from(
        "# Starling's configuration file, made from the settings' declarations\n\
         # (broker/src/config/tables.rs; docs/configuration.md has the same\n\
         # reference). Every key is optional and shows its default. Each is also\n\
         # a flag and a STARLING_ variable (named beside it); flags win over\n\
         # variables, which win over this file.\n",
    );
    let mut table = "";
    for setting in all_settings() {
        if setting.table != table {
            table = setting.table;
            out.push('\n');
            if let Some(text) = docs.get(table) {
                out.push_str(&comment(text));
            }
            out.push_str(&format!("[{table}]\n"));
        }
        let path = setting.path();
        out.push('\n');
        if let Some(text) = docs.get(&path) {
            out.push_str(&comment(text));
        }
        out.push_str(&format!("# (--{}, {})\n", setting.flag, setting.env()));
        match defaults.get(&path) {
            Some(value) => out.push_str(&format!("{} = {value}\n", setting.key)),
            None => match examples.get(&path) {
                Some(example) => out.push_str(&format!("# {} = {example}\n", setting.key)),
                None => out.push_str(&format!("# {} is unset\n", setting.key)),
            },
        }
    }
    out
}

/// `text` as `# ` comment lines of at most 76 characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    for paragraph in text.split("\n\n") {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > 76 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table_names;

    /// The repository's root, from the broker crate's.
    fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn bless() -> bool {
        std::env::var_os("STARLING_BLESS").is_some()
    }

    #[test]
    fn every_setting_and_table_is_documented() {
        let docs = descriptions();
        for setting in all_settings() {
            assert!(
                docs.get(&setting.path())
                    .is_some_and(|text| text.len() > 10),
                "{} has no doc comment",
                setting.path()
            );
        }
        for table in table_names() {
            assert!(docs.contains_key(table), "[{table}] has no doc comment");
        }
    }

    #[test]
    fn every_setting_unset_by_default_has_an_example() {
        let defaults = defaults();
        let examples = examples();
        for setting in all_settings() {
            let path = setting.path();
            assert!(
                defaults.contains_key(&path) || examples.contains_key(&path),
                "{path} is unset by default and its declaration gives no example"
            );
        }
    }

    #[test]
    fn the_example_file_is_current_and_parses_to_the_defaults() {
        let path = root().join("starling.example.toml");
        let made = example_toml();
        if bless() {
            std::fs::write(&path, &made).unwrap();
        }
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(
            file == made,
            "starling.example.toml is not what the declarations make: run \
             STARLING_BLESS=1 cargo test -p starling-broker config::reference"
        );
        assert_eq!(Config::from_toml(&file).unwrap(), Config::default());
    }

    #[test]
    fn the_reference_in_the_docs_is_current() {
        let path = root().join("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (Some(begin), Some(end)) = (doc.find(REFERENCE_BEGIN), doc.find(REFERENCE_END)) else {
            panic!("docs/configuration.md lacks the reference markers");
        };
        let end = end + REFERENCE_END.len() + 1;
        let made = reference_markdown();
        if bless() {
            let updated = format!("{}{made}{}", &doc[..begin], &doc[end.min(doc.len())..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        assert!(
            doc[begin..end.min(doc.len())] == made,
            "the reference in docs/configuration.md is not what the declarations make: run \
             STARLING_BLESS=1 cargo test -p starling-broker config::reference"
        );
    }

    #[test]
    fn every_table_of_the_schema_is_a_table_of_settings() {
        let schema = Config::json_schema();
        let properties = schema
            .as_value()
            .get("properties")
            .and_then(Value::as_object)
            .unwrap();
        let mut names: Vec<_> = properties.keys().map(String::as_str).collect();
        let mut tables = table_names();
        names.sort();
        tables.sort();
        assert_eq!(names, tables);
    }
}

//! Client identifiers and topic templates.
//!
//! A template may contain `%i` (the client's index), `%c` (its client id)
//! and `%%` (a literal `%`); any other `%` is kept as it is.

use crate::cli::Mode;

/// The client identifier of client `index` in `mode`: `PREFIX_MODE_INDEX`,
/// so that a publisher and a subscriber with the same index never take
/// over each other's session.
pub fn client_id(prefix: &str, mode: Mode, index: u32) -> String {
    format!("{prefix}_{}_{index}", mode.name())
}

/// Expands `%i`, `%c` and `%%` in `template`.
pub fn expand(template: &str, index: u32, client_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('i') => out.push_str(&index.to_string()),
            Some('c') => out.push_str(client_id),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_template_is_unchanged() {
        assert_eq!(expand("sensors/+/temp", 3, "id"), "sensors/+/temp");
    }

    #[test]
    fn index_and_client_id_are_substituted() {
        assert_eq!(expand("bench/%i", 42, "x"), "bench/42");
        assert_eq!(expand("%c/out", 0, "bench_pub_0"), "bench_pub_0/out");
        assert_eq!(expand("a/%i/%c/%i", 7, "c7"), "a/7/c7/7");
    }

    #[test]
    fn percent_escapes_and_unknown_sequences() {
        assert_eq!(expand("100%%", 1, "c"), "100%");
        assert_eq!(expand("a%zb", 1, "c"), "a%zb");
        assert_eq!(expand("end%", 1, "c"), "end%");
    }

    #[test]
    fn multibyte_text_survives() {
        assert_eq!(expand("température/%i", 5, "c"), "température/5");
    }

    #[test]
    fn client_ids_differ_by_mode() {
        assert_eq!(client_id("bench", Mode::Pub, 3), "bench_pub_3");
        assert_ne!(
            client_id("bench", Mode::Pub, 3),
            client_id("bench", Mode::Sub, 3)
        );
    }
}

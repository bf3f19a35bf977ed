//! Topic names and topic filters (MQTT 5.0 section 4.7, 3.1.1 section 4.7).

/// Why a topic name or filter is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic contains U+0000")]
    NullCharacter,
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInName,
    #[error("'#' must be the last level of a filter and occupy the whole level")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must occupy a whole level")]
    MisplacedSingleLevelWildcard,
    #[error(
        "shared subscription needs '$share/<group>/<filter>' with a non-empty group free of '+', '#' and '/'"
    )]
    InvalidSharedSubscription,
}

/// The levels of a topic name or filter: what `split('/')` yields.
///
/// Routing splits every published topic, and `str::split` with a `char`
/// compares each candidate through a call to `memcmp`; scanning the bytes
/// for `/` (ASCII, so every cut is a char boundary) costs a fraction.
pub fn levels(topic: &str) -> Levels<'_> {
    Levels { rest: Some(topic) }
}

/// See [`levels`].
#[derive(Clone, Debug)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(slash) => {
                self.rest = rest.get(slash + 1..);
                rest.get(..slash)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// How many levels `topic` has: `split('/').count()`.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|b| *b == b'/').count() + 1
}

/// Checks a PUBLISH topic name: non-empty, no U+0000, no wildcards.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.bytes().any(|b| b == 0) {
        return Err(TopicError::NullCharacter);
    }
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a plain topic filter (not `$share/...`): non-empty, no U+0000,
/// `+` alone in its level, `#` alone in the last level.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.bytes().any(|b| b == 0) {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// A subscription filter split into its share group (if any) and the filter
/// that is matched against topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// `Some(group)` for `$share/group/filter`; `$queue/filter` is the group
    /// named `$queue`.
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and validates a subscription filter, shared or not.
pub fn parse_filter(full: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = full.strip_prefix("$share/") {
        let (group, filter) = rest
            .split_once('/')
            .ok_or(TopicError::InvalidSharedSubscription)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::InvalidSharedSubscription);
        }
        validate_topic_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    if full == "$share" {
        return Err(TopicError::InvalidSharedSubscription);
    }
    if let Some(filter) = full.strip_prefix("$queue/") {
        validate_topic_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: Some("$queue"),
            filter,
        });
    }
    validate_topic_filter(full)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: full,
    })
}

/// True when `filter` (already validated) matches topic `name`. A filter
/// starting with a wildcard does not match a name starting with `$`.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut names = levels(name);
    for level in levels(filter) {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            literal => {
                if names.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_what_split_gives() {
        for topic in [
            "",
            "/",
            "a",
            "a/b",
            "/a",
            "a/",
            "a//b",
            "//",
            "$SYS/x/#",
            "é/ü/+/ß",
        ] {
            let expected: Vec<&str> = topic.split('/').collect();
            assert_eq!(levels(topic).collect::<Vec<_>>(), expected, "{topic:?}");
            assert_eq!(level_count(topic), expected.len(), "{topic:?}");
        }
    }

    #[test]
    fn filter_validation_follows_section_4_7_1() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "//", "$SYS/#", "a/+/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("a/#/b"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a+/b"),
            Err(TopicError::MisplacedSingleLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a\0b"),
            Err(TopicError::NullCharacter)
        );
    }

    #[test]
    fn names_reject_wildcards_and_empty() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters_parse() {
        let p = parse_filter("$share/g1/a/+").unwrap();
        assert_eq!(p.share_group, Some("g1"));
        assert_eq!(p.filter, "a/+");
        let q = parse_filter("$queue/x/#").unwrap();
        assert_eq!(q.share_group, Some("$queue"));
        assert_eq!(q.filter, "x/#");
        assert!(parse_filter("$share/g1").is_err());
        assert!(parse_filter("$share//a").is_err());
        assert!(parse_filter("$share/g+/a").is_err());
        assert_eq!(parse_filter("a/b").unwrap().share_group, None);
    }

    #[test]
    fn matching_follows_section_4_7() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a/+/c", "a//c"));
    }
}

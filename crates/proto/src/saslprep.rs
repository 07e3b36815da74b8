//! SASLprep (RFC 4013) in its two flavours: *stored strings* for user names
//! (unassigned code points refused) and *queries* for passwords (unassigned
//! code points allowed, RFC 3454 §7).

use stringprep::tables;
use unicode_normalization::UnicodeNormalization as _;

/// A string SASLprep refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslprepError {
    /// A prohibited character (control, private use, …) or bidi violation.
    #[error("contains characters SASLprep prohibits")]
    Prohibited,
    /// Empty after preparation.
    #[error("empty after SASLprep")]
    Empty,
}

/// Stored-strings rules (user names).
pub fn prepare_stored(s: &str) -> Result<String, SaslprepError> {
    let out = stringprep::saslprep(s).map_err(|_| SaslprepError::Prohibited)?;
    if out.is_empty() {
        return Err(SaslprepError::Empty);
    }
    Ok(out.into_owned())
}

/// Query rules (passwords): as stored strings, but unassigned code points pass.
pub fn prepare_query(s: &str) -> Result<String, SaslprepError> {
    if let Ok(out) = stringprep::saslprep(s) {
        return if out.is_empty() {
            Err(SaslprepError::Empty)
        } else {
            Ok(out.into_owned())
        };
    }
    // RFC 4013 §2.1–2.4 without the unassigned-code-point check. Mapping
    // order as in `stringprep::saslprep` (U+200B is in both tables: space).
    let mapped: String = s
        .chars()
        .map(|c| {
            if tables::non_ascii_space_character(c) {
                ' '
            } else {
                c
            }
        })
        .filter(|&c| !tables::commonly_mapped_to_nothing(c))
        .collect();
    let normalized: String = mapped.nfkc().collect();
    let prohibited = normalized.chars().any(|c| {
        tables::non_ascii_space_character(c)
            || tables::ascii_control_character(c)
            || tables::non_ascii_control_character(c)
            || tables::private_use(c)
            || tables::non_character_code_point(c)
            || tables::surrogate_code(c)
            || tables::inappropriate_for_plain_text(c)
            || tables::inappropriate_for_canonical_representation(c)
            || tables::change_display_properties_or_deprecated(c)
            || tables::tagging_character(c)
    });
    if prohibited || bidi_violation(&normalized) {
        return Err(SaslprepError::Prohibited);
    }
    if normalized.is_empty() {
        return Err(SaslprepError::Empty);
    }
    Ok(normalized)
}

fn bidi_violation(s: &str) -> bool {
    if !s.chars().any(tables::bidi_r_or_al) {
        return false;
    }
    let first_last_ral = s.chars().next().is_some_and(tables::bidi_r_or_al)
        && s.chars().next_back().is_some_and(tables::bidi_r_or_al);
    s.chars().any(tables::bidi_l) || !first_last_ral
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4013_examples() {
        assert_eq!(prepare_query("I\u{00AD}X").unwrap(), "IX");
        assert_eq!(prepare_query("user").unwrap(), "user");
        assert_eq!(prepare_query("USER").unwrap(), "USER");
        assert_eq!(prepare_query("\u{00AA}").unwrap(), "a");
        assert_eq!(prepare_query("\u{2168}").unwrap(), "IX");
        assert_eq!(prepare_query("\u{0007}"), Err(SaslprepError::Prohibited));
        assert_eq!(
            prepare_query("\u{0627}\u{0031}"),
            Err(SaslprepError::Prohibited)
        );
        assert_eq!(prepare_stored("a\u{00A0}b").unwrap(), "a b");
    }

    #[test]
    fn unassigned_code_points_pass_only_in_queries() {
        // U+0221 was unassigned in Unicode 3.2.
        assert!(prepare_stored("a\u{0221}").is_err());
        assert_eq!(prepare_query("a\u{0221}").unwrap(), "a\u{0221}");
    }

    #[test]
    fn both_paths_map_zero_width_space_alike() {
        // U+200B is a non-ASCII space and "mapped to nothing"; the stored
        // path (stringprep crate) and the query fallback (taken when an
        // unassigned code point is present) must agree.
        assert_eq!(prepare_stored("a\u{200B}b").unwrap(), "a b");
        assert_eq!(prepare_query("a\u{200B}b\u{0221}").unwrap(), "a b\u{0221}");
    }

    #[test]
    fn empty_strings_are_refused() {
        assert_eq!(prepare_query(""), Err(SaslprepError::Empty));
        assert_eq!(prepare_stored("\u{00AD}"), Err(SaslprepError::Empty));
    }
}

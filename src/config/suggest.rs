//! "Did you mean": the valid key or value nearest to a mistyped one.

/// The candidate closest to `word` by edit distance, when close enough to be
/// a typo of it (at most a third of its letters, and 2, changed).
pub(super) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_key_and_strangers_find_none() {
        let keys = ["primary", "replicas", "connect_timeout"];
        assert_eq!(nearest("primry", &keys), Some("primary"));
        assert_eq!(nearest("replica", &keys), Some("replicas"));
        assert_eq!(nearest("password", &keys), None);
        let sections = [
            "database",
            "partitions",
            "lag",
            "upgrade",
            "cutover",
            "http",
        ];
        assert_eq!(nearest("partition", &sections), Some("partitions"));
        assert_eq!(nearest("x", &sections), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}

//! docs/upgrade.md's step table is the saga table: a unit test renders the
//! rows as the docs print them and finds them there, in order, so the
//! table an operator reads cannot drift from what the runner runs.

use super::step::Region;
use super::table::SAGA;

/// How docs/upgrade.md names a region.
fn region_in_docs(region: Region) -> &'static str {
    match region {
        Region::Prepare => "before the pause",
        Region::PauseDeadline => "write pause",
        Region::AfterPromote => "after promote",
    }
}

/// The step table's body rows as docs/upgrade.md prints them.
fn docs_rows() -> Vec<String> {
    SAGA.iter()
        .enumerate()
        .map(|(i, r)| {
            let undo = match r.meta.undoes {
                "" => "-",
                t => t,
            };
            format!(
                "| {} | `{}` | {} | {} | {} |",
                i + 1,
                r.step.name(),
                region_in_docs(r.step.region()),
                r.does,
                undo
            )
        })
        .collect()
}

mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../docs/upgrade.md");

    #[test]
    fn the_docs_table_is_the_saga_table() {
        let table: Vec<&str> = DOCS
            .lines()
            .skip_while(|l| !l.starts_with("| # | step |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let want = docs_rows();
        assert_eq!(
            table,
            want.iter().map(String::as_str).collect::<Vec<_>>(),
            "docs/upgrade.md's step table differs from upgrade::table::SAGA; paste:\n{}",
            want.join("\n")
        );
    }
}

use super::*;

#[test]
fn api_codes_are_classified() {
    assert_eq!(api::kind_of_code("Throttling"), ApiErrorKind::Throttled);
    assert_eq!(
        api::kind_of_code("DBInstanceNotFound"),
        ApiErrorKind::NotFound
    );
    assert_eq!(
        api::kind_of_code("InvalidDBInstanceState"),
        ApiErrorKind::InvalidState
    );
    assert_eq!(
        api::kind_of_code("InvalidParameterCombination"),
        ApiErrorKind::Other
    );
}

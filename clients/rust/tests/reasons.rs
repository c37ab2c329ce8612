//! The library knows every reason the server documents (docs/errors.md), by name.

use cachelock_client::Reason;

#[test]
fn every_reason_the_server_documents_is_known_by_name() {
    let documented = include_str!("../../../docs/errors.md");
    let names: Vec<&str> = documented
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(names.len() >= 26, "{names:?}");
    for name in names {
        let reason = Reason::from_name(name);
        assert!(
            !matches!(reason, Reason::Other(_)),
            "{name} is not known to the library"
        );
        assert_eq!(reason.name(), name);
    }
    assert_eq!(Reason::from_name("NEWER"), Reason::Other("NEWER".into()));
}

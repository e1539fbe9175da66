//! An error shown with its causes on one line (`top: cause: deeper cause`), for log lines and for
//! reasons that cross a process boundary, where only the text survives.

/// `error` and every `source()` under it, `: `-separated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("could not open the store")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once_in_order() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::chain(&error), "could not open the store: disk full");
        assert_eq!(super::chain(&std::io::Error::other("alone")), "alone");
    }
}

//! Small SQL text helpers shared by the backends.

use crate::error::Error;

/// Quotes an identifier for PostgreSQL and SQLite: wrapped in double quotes, inner quotes
/// doubled, so any name (with spaces, quotes or semicolons) is one identifier and can inject
/// nothing.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks a table or schema name given in the configuration.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::Config(format!("the {what} name is empty")));
    }
    if name.contains('\0') {
        return Err(Error::Config(format!(
            "the {what} name {name:?} contains a NUL character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("we\"ird; DROP"), "\"we\"\"ird; DROP\"");
    }
}

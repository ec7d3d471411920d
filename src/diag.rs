//! Diagnostics: one error per problem, each with `file:line:col`.

use std::fmt;

use serde::Serialize;

/// One problem found in a repository, located in a file (line and column 0
/// when only the file or folder is known, as for an operator's guardrail
/// broken by an environment as a whole).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// The file, relative to the repository root, `/`-separated.
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// JSON pointer of the offending value inside the document, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: error: ", self.file, self.line, self.column)?;
        }
        match &self.pointer {
            Some(p) if !p.is_empty() => write!(f, "{p}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

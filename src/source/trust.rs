//! Source trust: only commits signed by a trusted key are read. Git's SSH
//! signatures (`gpg.format=ssh`) are checked against an `allowed_signers`
//! file (git's format, `gpg.ssh.allowedSignersFile`) with RustCrypto's
//! `ssh-key`, OpenPGP signatures against armored public keys with `pgp`
//! (rPGP); nothing is shelled out to.
//!
//! What is verified: the commit being read, and with
//! [`Verify::AllSince`] every commit since a revision (so a signed merge
//! cannot bring an unsigned commit in with it).

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const GIT_NAMESPACE: &str = "git";

/// Commits verified at most with `all-since` (a bound, not a limit anyone
/// should reach: more is refused with that said).
const MAX_COMMITS: usize = 10_000;

/// Which commits must be signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The commit read (`--rev`, the branch tip).
    Tip,
    /// Every commit reachable from the one read and not from this revision
    /// (`--verify-signatures=all-since REV`; the daemon's: the revision it
    /// last applied).
    AllSince(String),
}

impl Verify {
    /// `--verify-signatures` values: none or `tip`; `all-since REV`,
    /// `all-since=REV` or `all-since:REV`.
    pub fn parse(values: &[String]) -> Result<Verify, String> {
        match values {
            [] => Ok(Verify::Tip),
            [one] if one == "tip" => Ok(Verify::Tip),
            [mode, rev] if mode == "all-since" && !rev.is_empty() => {
                Ok(Verify::AllSince(rev.clone()))
            }
            [one] => match one
                .strip_prefix("all-since=")
                .or_else(|| one.strip_prefix("all-since:"))
            {
                Some(rev) if !rev.is_empty() => Ok(Verify::AllSince(rev.to_string())),
                _ => Err(format!(
                    "--verify-signatures takes `tip` (the default) or `all-since REV`, not `{one}`"
                )),
            },
            other => Err(format!(
                "--verify-signatures takes `tip` (the default) or `all-since REV`, not `{}`",
                other.join(" ")
            )),
        }
    }
}

/// A key of an `allowed_signers` file.
#[derive(Clone, Debug)]
struct AllowedSigner {
    principals: String,
    key: PublicKey,
    /// `namespaces="..."`: the namespaces it may sign in (any without).
    namespaces: Option<Vec<String>>,
    /// `valid-after=` / `valid-before=`: when the key is trusted, checked
    /// against the time of verification (see [`validity`]).
    valid_after: Option<jiff::Timestamp>,
    valid_before: Option<jiff::Timestamp>,
    /// Where it was read, for messages.
    line: usize,
}

/// An OpenPGP key of a `--trusted-keys` file.
#[derive(Clone, Debug)]
struct TrustedPgpKey {
    key: SignedPublicKey,
    /// The key carries a revocation signature: nothing it signs is trusted.
    revoked: bool,
}

/// The keys commits may be signed with.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    ssh: Vec<AllowedSigner>,
    pgp: Vec<TrustedPgpKey>,
    /// The files the keys came from, for messages.
    files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("cannot read the allowed signers file {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "{path} holds no key: add a line `PRINCIPAL KEYTYPE BASE64KEY` per signer (git's allowed_signers format)"
    )]
    Empty { path: String },
    #[error(
        "--verify-signatures needs trusted keys: give --allowed-signers FILE (SSH signatures) and/or --trusted-keys FILE (OpenPGP)"
    )]
    NoKeys,
    #[error(
        "{path}: OpenPGP public key {index} cannot be read: {cause}; the file holds armored public keys (`gpg --armor --export KEYID`)"
    )]
    PgpKey {
        path: String,
        index: usize,
        cause: String,
    },
}

/// Why a commit is not trusted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("commit {commit} is not trusted: {why}{}; nothing of it is applied: sign it with a trusted key (see README, \"Signed commits\")", key_text(.key))]
pub struct Untrusted {
    /// Full hex id of the commit.
    pub commit: String,
    /// The signing key's SHA-256 fingerprint, when it is signed.
    pub key: Option<String>,
    pub why: String,
}

fn key_text(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" (key {k})"))
        .unwrap_or_default()
}

/// Verification failed for another reason than a commit's signature.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error(
        "cannot list the commits since {since}: {cause}; give a revision the commit read descends from"
    )]
    Since { since: String, cause: String },
}

const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

impl Trust {
    /// Reads an `allowed_signers` file and/or a file of armored OpenPGP
    /// public keys.
    pub fn load(
        allowed_signers: Option<&Path>,
        trusted_keys: Option<&Path>,
    ) -> Result<Trust, TrustError> {
        let mut trust = Trust::default();
        if let Some(path) = trusted_keys {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| TrustError::Read {
                path: shown.clone(),
                cause: e.to_string(),
            })?;
            trust.pgp = parse_pgp_keys(&text, &shown)?;
            if trust.pgp.is_empty() {
                return Err(TrustError::Empty { path: shown });
            }
            trust.files.push(path.to_path_buf());
        }
        if let Some(path) = allowed_signers {
            let text = std::fs::read_to_string(path).map_err(|e| TrustError::Read {
                path: path.display().to_string(),
                cause: e.to_string(),
            })?;
            trust.ssh = parse_allowed_signers(&text, &path.display().to_string())?;
            if trust.ssh.is_empty() {
                return Err(TrustError::Empty {
                    path: path.display().to_string(),
                });
            }
            trust.files.push(path.to_path_buf());
        }
        if trust.ssh.is_empty() && trust.pgp.is_empty() {
            return Err(TrustError::NoKeys);
        }
        Ok(trust)
    }

    /// Checks one commit's signature.
    pub fn verify_commit(&self, repo: &Repository, commit: Oid) -> Result<(), Untrusted> {
        let untrusted = |key: Option<String>, why: String| Untrusted {
            commit: commit.to_string(),
            key,
            why,
        };
        let (signature, signed) = match repo.extract_signature(&commit, None) {
            Ok(found) => found,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(untrusted(None, "it is not signed".into()));
            }
            Err(e) => {
                return Err(untrusted(
                    None,
                    format!("its signature cannot be read: {}", e.message()),
                ));
            }
        };
        let signature = String::from_utf8_lossy(&signature).into_owned();
        if signature.contains("-----BEGIN SSH SIGNATURE-----") {
            return self.verify_ssh(&signature, &signed, &untrusted);
        }
        if signature.contains("-----BEGIN PGP SIGNATURE-----") {
            return self.verify_pgp(&signature, &signed, &untrusted);
        }
        Err(untrusted(
            None,
            "its signature is of a kind tenantsync does not verify (neither SSH nor OpenPGP)"
                .into(),
        ))
    }

    fn verify_ssh(
        &self,
        armored: &str,
        signed: &[u8],
        untrusted: &dyn Fn(Option<String>, String) -> Untrusted,
    ) -> Result<(), Untrusted> {
        let sig = SshSig::from_pem(armored.trim())
            .map_err(|e| untrusted(None, format!("its SSH signature cannot be decoded: {e}")))?;
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let key = Some(fingerprint.clone());
        if sig.namespace() != GIT_NAMESPACE {
            return Err(untrusted(
                key,
                format!(
                    "it is signed in namespace `{}`, not `{GIT_NAMESPACE}`",
                    sig.namespace()
                ),
            ));
        }
        let Some(signer) = self
            .ssh
            .iter()
            .find(|s| s.key.key_data() == sig.public_key())
        else {
            return Err(untrusted(
                key,
                format!("it is signed by a key that is not in {}", self.files_text()),
            ));
        };
        if let Some(namespaces) = &signer.namespaces
            && !namespaces.iter().any(|n| n == GIT_NAMESPACE)
        {
            return Err(untrusted(
                key,
                format!(
                    "the key of {} (line {}) may not sign in namespace `{GIT_NAMESPACE}` (namespaces=\"{}\")",
                    signer.principals,
                    signer.line,
                    namespaces.join(",")
                ),
            ));
        }
        if let Some(why) = validity(
            jiff::Timestamp::now(),
            signer.valid_after,
            signer.valid_before,
        ) {
            return Err(untrusted(
                key,
                format!(
                    "the key of {} (line {} of the allowed signers file) {why}",
                    signer.principals, signer.line
                ),
            ));
        }
        signer
            .key
            .verify(GIT_NAMESPACE, signed, &sig)
            .map_err(|e| {
                untrusted(
                    key,
                    format!(
                        "its signature by {} does not match the commit (it was changed after signing): {e}",
                        signer.principals
                    ),
                )
            })
    }

    fn verify_pgp(
        &self,
        armored: &str,
        signed: &[u8],
        untrusted: &dyn Fn(Option<String>, String) -> Untrusted,
    ) -> Result<(), Untrusted> {
        let (sig, _) = DetachedSignature::from_string(armored.trim()).map_err(|e| {
            untrusted(
                None,
                format!("its OpenPGP signature cannot be decoded: {e}"),
            )
        })?;
        let issuers: Vec<String> = sig
            .signature
            .issuer_key_id()
            .iter()
            .map(|id| hex_upper(id.as_ref()))
            .collect();
        let issuer_fingerprints: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .collect();
        let key = issuer_fingerprints.first().or(issuers.first()).cloned();
        // Every primary key and subkey the signature names as its issuer.
        let named = |id: String, fingerprint: String| {
            issuers.contains(&id)
                || issuer_fingerprints.contains(&fingerprint)
                || (issuers.is_empty() && issuer_fingerprints.is_empty())
        };
        for trusted in &self.pgp {
            let primary = &trusted.key.primary_key;
            let mut candidates: Vec<Candidate> = Vec::new();
            let self_signed = |s: &&pgp::packet::Signature| {
                s.issuer_key_id().contains(&&primary.legacy_key_id())
                    || s.issuer_fingerprint().contains(&&primary.fingerprint())
            };
            let primary_sigs: Vec<&pgp::packet::Signature> = trusted
                .key
                .details
                .users
                .iter()
                .flat_map(|u| u.signatures.iter())
                .chain(trusted.key.details.direct_signatures.iter())
                .filter(self_signed)
                .collect();
            let primary_expiry = expiry(primary.created_at().as_secs(), &primary_sigs);
            if named(
                hex_upper(primary.legacy_key_id().as_ref()),
                format!("{:X}", primary.fingerprint()),
            ) {
                candidates.push((
                    format!("{:X}", primary.fingerprint()),
                    sig.verify(primary, signed).map_err(|e| e.to_string()),
                    false,
                    primary_expiry,
                ));
            }
            for sub in &trusted.key.public_subkeys {
                if named(
                    hex_upper(sub.key.legacy_key_id().as_ref()),
                    format!("{:X}", sub.key.fingerprint()),
                ) {
                    // A subkey revoked on its own (its primary key still
                    // good) signs nothing any more.
                    let revoked = sub
                        .signatures
                        .iter()
                        .any(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyRevocation));
                    let bindings: Vec<&pgp::packet::Signature> =
                        sub.signatures.iter().filter(self_signed).collect();
                    let sub_expiry = expiry(sub.key.created_at().as_secs(), &bindings);
                    candidates.push((
                        format!("{:X}", sub.key.fingerprint()),
                        sig.verify(&sub.key, signed).map_err(|e| e.to_string()),
                        revoked,
                        match (primary_expiry, sub_expiry) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        },
                    ));
                }
            }
            let Some((fingerprint, result, subkey_revoked, expires)) = candidates
                .iter()
                .find(|(_, r, _, _)| r.is_ok())
                .or(candidates.first())
            else {
                continue;
            };
            let key = Some(fingerprint.clone());
            let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
            return match result {
                Ok(()) if trusted.revoked || *subkey_revoked => {
                    Err(untrusted(key, "it is signed by a revoked key".into()))
                }
                Ok(()) if expires.is_some_and(|at| now >= at) => {
                    let at = expires
                        .and_then(|at| i64::try_from(at).ok())
                        .and_then(|at| jiff::Timestamp::from_second(at).ok())
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    Err(untrusted(
                        key,
                        format!(
                            "it is signed by a key that expired at {at}: sign with a current key, or extend the key's expiry (`gpg --quick-set-expire`) and export it to the trusted keys again"
                        ),
                    ))
                }
                Ok(()) => Ok(()),
                Err(e) => Err(untrusted(
                    key,
                    format!(
                        "its OpenPGP signature does not match the commit (it was changed after signing): {e}"
                    ),
                )),
            };
        }
        Err(untrusted(
            key,
            format!(
                "it is signed by an OpenPGP key that is not in {}",
                self.files_text()
            ),
        ))
    }

    fn files_text(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        files.join(", ")
    }

    /// Verifies what `verify` asks of the commit `commit` in `repo`.
    pub fn verify(
        &self,
        repo: &Repository,
        commit: &str,
        verify: &Verify,
    ) -> Result<(), VerifyError> {
        let tip = Oid::from_str(commit).map_err(|e| VerifyError::Since {
            since: commit.to_string(),
            cause: e.message().to_string(),
        })?;
        match verify {
            Verify::Tip => Ok(self.verify_commit(repo, tip)?),
            Verify::AllSince(since) => {
                // The commit read is checked whatever the base: with the
                // base at the tip itself, the walk below is empty (a
                // pipeline reusing `all-since origin/main` after the merge
                // checked nothing).
                self.verify_commit(repo, tip)?;
                let since_cause = |cause: String| VerifyError::Since {
                    since: since.clone(),
                    cause,
                };
                let base = repo
                    .revparse_single(since)
                    .and_then(|o| o.peel_to_commit())
                    .map_err(|e| since_cause(e.message().to_string()))?
                    .id();
                if base != tip
                    && !repo
                        .graph_descendant_of(tip, base)
                        .map_err(|e| since_cause(e.message().to_string()))?
                {
                    return Err(since_cause(format!(
                        "commit {tip} does not descend from it (history rewritten?)"
                    )));
                }
                let mut walk = repo
                    .revwalk()
                    .map_err(|e| since_cause(e.message().to_string()))?;
                walk.push(tip)
                    .and_then(|()| walk.hide(base))
                    .map_err(|e| since_cause(e.message().to_string()))?;
                // Oldest first: the first unsigned commit is named.
                walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
                    .map_err(|e| since_cause(e.message().to_string()))?;
                for (n, oid) in walk.enumerate() {
                    if n >= MAX_COMMITS {
                        return Err(since_cause(format!(
                            "more than {MAX_COMMITS} commits to verify"
                        )));
                    }
                    let oid = oid.map_err(|e| since_cause(e.message().to_string()))?;
                    self.verify_commit(repo, oid)?;
                }
                Ok(())
            }
        }
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Armored OpenPGP public keys, one or more blocks.
fn parse_pgp_keys(text: &str, path: &str) -> Result<Vec<TrustedPgpKey>, TrustError> {
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let mut keys = Vec::new();
    for (index, block) in text.split(BEGIN).skip(1).enumerate() {
        let armored = format!("{BEGIN}{block}");
        let error = |cause: String| TrustError::PgpKey {
            path: path.to_string(),
            index: index + 1,
            cause,
        };
        let (many, _) =
            SignedPublicKey::from_string_many(&armored).map_err(|e| error(e.to_string()))?;
        for key in many {
            let key = key.map_err(|e| error(e.to_string()))?;
            let revoked = !key.details.revocation_signatures.is_empty();
            keys.push(TrustedPgpKey { key, revoked });
        }
    }
    Ok(keys)
}

/// Parses git's `allowed_signers` format: per line, principals (comma
/// separated), optional options (`namespaces="git"`, `valid-after=`, ...),
/// the key type and the base64 key, an optional comment.
fn parse_allowed_signers(text: &str, path: &str) -> Result<Vec<AllowedSigner>, TrustError> {
    let mut signers = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: String| TrustError::Line {
            path: path.to_string(),
            line: i + 1,
            message,
        };
        let (principals, rest) = split_token(line);
        let rest = rest.trim_start();
        let (options, key_text) = if KEY_TYPES.iter().any(|t| rest.starts_with(t)) {
            (None, rest)
        } else {
            let (options, rest) = split_token(rest);
            (Some(options), rest.trim_start())
        };
        if !KEY_TYPES.iter().any(|t| key_text.starts_with(t)) {
            return Err(error(
                "expected `PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY`: no SSH key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...) where the key should be".into(),
            ));
        }
        let key = PublicKey::from_openssh(key_text)
            .map_err(|e| error(format!("the public key cannot be read: {e}")))?;
        let mut namespaces = None;
        let (mut valid_after, mut valid_before) = (None, None);
        if let Some(options) = options {
            for option in split_options(&options) {
                let (name, value) = option.split_once('=').unwrap_or((option.as_str(), ""));
                match name.to_ascii_lowercase().as_str() {
                    "namespaces" => {
                        namespaces = Some(
                            value
                                .trim_matches('"')
                                .split(',')
                                .map(|n| n.trim().to_string())
                                .collect(),
                        )
                    }
                    "cert-authority" => {
                        return Err(error(
                            "cert-authority keys (SSH certificates) are not supported: list the signers' own keys".into(),
                        ));
                    }
                    // Checked against the time of verification, not the
                    // commit time git uses (the committer chooses that).
                    "valid-after" => valid_after = Some(signer_time(value).map_err(&error)?),
                    "valid-before" => valid_before = Some(signer_time(value).map_err(&error)?),
                    other => return Err(error(format!("unknown option `{other}`"))),
                }
            }
        }
        signers.push(AllowedSigner {
            principals: principals.trim_matches('"').to_string(),
            key,
            namespaces,
            valid_after,
            valid_before,
            line: i + 1,
        });
    }
    Ok(signers)
}

/// A key a signature may be by: its fingerprint, the signature's check,
/// whether the key is revoked, when it expires (seconds since the epoch).
type Candidate = (String, Result<(), String>, bool, Option<u64>);

/// When an OpenPGP key created at `created` (seconds since the epoch)
/// expires, by the newest of its self-signatures `sigs` (a user id's
/// certification or a subkey's binding): none when it never does.
fn expiry(created: u32, sigs: &[&pgp::packet::Signature]) -> Option<u64> {
    let newest = sigs
        .iter()
        .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))?;
    let lasts = newest.key_expiration_time()?.as_secs();
    if lasts == 0 {
        return None;
    }
    Some(u64::from(created).saturating_add(u64::from(lasts)))
}

/// Why a key is not trusted at `now` given its validity window, if it is
/// not: before `valid-after`, or at or after `valid-before`.
fn validity(
    now: jiff::Timestamp,
    after: Option<jiff::Timestamp>,
    before: Option<jiff::Timestamp>,
) -> Option<String> {
    if let Some(after) = after
        && now < after
    {
        return Some(format!(
            "is trusted only from {after} (valid-after); it is {now}"
        ));
    }
    if let Some(before) = before
        && now >= before
    {
        return Some(format!(
            "was trusted only until {before} (valid-before); it expired: sign with a current key, or extend its valid-before if it is still to be trusted"
        ));
    }
    None
}

/// An `allowed_signers` time, as ssh-keygen writes them: `YYYYMMDD` or
/// `YYYYMMDDHHMM[SS]`, optionally quoted, with or without a trailing `Z`;
/// read as UTC either way (ssh-keygen reads one without `Z` in the local
/// time zone, which a container's is anyway).
fn signer_time(value: &str) -> Result<jiff::Timestamp, String> {
    let text = value.trim_matches('"');
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    let bad = || {
        format!(
            "`{text}` is not a time: write YYYYMMDD or YYYYMMDDHHMM[SS], optionally with a trailing Z (UTC)"
        )
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i16, String> {
        digits
            .get(range)
            .unwrap_or("0")
            .parse::<i16>()
            .map_err(|_| bad())
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = if digits.len() >= 12 {
        (
            number(8..10)?,
            number(10..12)?,
            if digits.len() == 14 {
                number(12..14)?
            } else {
                0
            },
        )
    } else {
        (0, 0, 0)
    };
    let civil = jiff::civil::DateTime::new(
        year,
        i8::try_from(month).map_err(|_| bad())?,
        i8::try_from(day).map_err(|_| bad())?,
        i8::try_from(hour).map_err(|_| bad())?,
        i8::try_from(minute).map_err(|_| bad())?,
        i8::try_from(second).map_err(|_| bad())?,
        0,
    )
    .map_err(|_| bad())?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|_| bad())
}

/// The first whitespace-separated token (double quotes keep spaces), and
/// the rest.
fn split_token(s: &str) -> (String, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (s[..i].to_string(), &s[i..]),
            _ => {}
        }
    }
    (s.to_string(), "")
}

/// Comma-separated options, commas inside double quotes kept.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqS00/+sMfhwU1rt7/E9Dj287kvrFYJKVPulCGsrJm7";

    #[test]
    fn allowed_signers_lines_parse_with_options_and_comments() {
        let text = format!(
            "# the platform team\nalice@example.com {KEY} alice laptop\n\"bob@example.com,carol@example.com\" namespaces=\"git,file\" {KEY}\n"
        );
        let signers = parse_allowed_signers(&text, "signers").unwrap();
        assert_eq!(signers.len(), 2);
        assert_eq!(signers[0].principals, "alice@example.com");
        assert_eq!(signers[0].namespaces, None);
        assert_eq!(signers[1].line, 3);
        assert_eq!(
            signers[1].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
    }

    #[test]
    fn a_broken_allowed_signers_line_is_named_with_what_to_do() {
        let e = parse_allowed_signers("alice@example.com not-a-key\n", "signers").unwrap_err();
        assert!(
            e.to_string().starts_with("signers:1: expected `PRINCIPALS"),
            "{e}"
        );
        let e = parse_allowed_signers("\nalice@example.com ssh-ed25519 AAAAbroken\n", "signers")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("signers:2: the public key cannot be read"),
            "{e}"
        );
        let e = parse_allowed_signers(&format!("a cert-authority {KEY}\n"), "signers").unwrap_err();
        assert!(e.to_string().contains("cert-authority"), "{e}");
    }

    #[test]
    fn allowed_signers_validity_times_parse_as_ssh_keygen_writes_them() {
        let t = |v: &str| signer_time(v).map(|t| t.to_string());
        assert_eq!(t("20261201").as_deref(), Ok("2026-12-01T00:00:00Z"));
        assert_eq!(t("\"20261201Z\"").as_deref(), Ok("2026-12-01T00:00:00Z"));
        assert_eq!(t("202612011530").as_deref(), Ok("2026-12-01T15:30:00Z"));
        assert_eq!(t("20261201153005Z").as_deref(), Ok("2026-12-01T15:30:05Z"));
        for bad in [
            "",
            "2026-12-01",
            "20261301",
            "20261232",
            "2026120",
            "20261201123",
            "+0261201",
            "20261201246000",
        ] {
            let e = signer_time(bad).unwrap_err();
            assert!(e.contains("YYYYMMDD"), "{bad}: {e}");
        }
        let signers = parse_allowed_signers(
            &format!("a valid-after=\"20260101\",valid-before=\"20270101\" {KEY}\n"),
            "signers",
        )
        .unwrap();
        assert_eq!(
            signers[0].valid_after.map(|t| t.to_string()).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            signers[0].valid_before.map(|t| t.to_string()).as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        let e = parse_allowed_signers(&format!("a valid-before=tomorrow {KEY}\n"), "signers")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("signers:1: `tomorrow` is not a time"),
            "{e}"
        );
    }

    #[test]
    fn a_key_is_trusted_only_inside_its_validity_window() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let (after, before) = (
            Some(at("2026-01-01T00:00:00Z")),
            Some(at("2027-01-01T00:00:00Z")),
        );
        assert_eq!(validity(at("2026-06-01T00:00:00Z"), after, before), None);
        assert_eq!(validity(at("2026-01-01T00:00:00Z"), after, before), None);
        let early = validity(at("2025-12-31T23:59:59Z"), after, before).unwrap();
        assert!(early.contains("valid-after"), "{early}");
        let late = validity(at("2027-01-01T00:00:00Z"), after, before).unwrap();
        assert!(
            late.contains("valid-before") && late.contains("expired"),
            "{late}"
        );
        assert_eq!(validity(at("2099-01-01T00:00:00Z"), None, None), None);
    }

    #[test]
    fn verify_signatures_values_parse() {
        let v = |s: &[&str]| Verify::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&[]), Ok(Verify::Tip));
        assert_eq!(v(&["tip"]), Ok(Verify::Tip));
        assert_eq!(v(&["all-since", "abc"]), Ok(Verify::AllSince("abc".into())));
        assert_eq!(v(&["all-since=abc"]), Ok(Verify::AllSince("abc".into())));
        assert!(v(&["all-since"]).is_err());
        assert!(v(&["every"]).is_err());
    }
}

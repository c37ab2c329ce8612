//! Client certificate identities, compared as structures, never as text.
//!
//! A subject is a sequence of relative distinguished names (RDNs), each a set of
//! attributes (type and value). The auth file writes one as RFC 4514 does
//! (`CN=billing,O=Acme`, with `\,` for a comma inside a value), and it matches a
//! certificate whose subject has exactly those RDNs, with exactly those values,
//! in that order or the reverse (RFC 4514 writes the last RDN first, `openssl x509
//! -subject` the first first). A certificate whose single common name is
//! `billing,O=Acme` is therefore one RDN and matches `CN=billing\,O=Acme`, never
//! `CN=billing,O=Acme`.
//!
//! Subject alternative names are typed: `dns:`, `uri:`, `email:` or `ip:`; a
//! rule matches only a name of its type.

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use x509_parser::{
    prelude::{FromDer, GeneralName, X509Certificate},
    x509::X509Name,
};

/// The attribute types an auth file may name, with their OIDs.
const ATTRIBUTE_TYPES: [(&str, &str); 15] = [
    ("CN", "2.5.4.3"),
    ("SN", "2.5.4.4"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("TITLE", "2.5.4.12"),
    ("GN", "2.5.4.42"),
    ("DNQUALIFIER", "2.5.4.46"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
];

/// One attribute of a name: its type as a dotted OID, and its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attribute {
    oid: String,
    value: String,
}

/// A distinguished name: its RDNs in order, each RDN's attributes sorted (an RDN is a set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinguishedName(Vec<Vec<Attribute>>);

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rdns: Vec<String> = self
            .0
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|attribute| {
                        let name = ATTRIBUTE_TYPES
                            .iter()
                            .find(|(_, oid)| *oid == attribute.oid)
                            .map_or(attribute.oid.as_str(), |(name, _)| name);
                        format!("{name}={}", escape(&attribute.value))
                    })
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect();
        f.write_str(&rdns.join(","))
    }
}

fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for (index, character) in value.chars().enumerate() {
        let edge =
            index == 0 && matches!(character, ' ' | '#') || index + 1 == value.chars().count() && character == ' ';
        if edge || matches!(character, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

impl DistinguishedName {
    /// Reads a subject as RFC 4514 writes it. Unescaped spaces around separators
    /// are ignored; attribute types are the usual short names or dotted OIDs.
    ///
    /// # Errors
    /// What is wrong with it, in words.
    pub fn parse(text: &str) -> Result<DistinguishedName, String> {
        let mut rdns = Vec::new();
        for rdn in split_unescaped(text, ',')? {
            let mut attributes = Vec::new();
            for attribute in split_unescaped(&rdn, '+')? {
                attributes.push(parse_attribute(&attribute)?);
            }
            attributes.sort();
            rdns.push(attributes);
        }
        if rdns.is_empty() {
            return Err("is empty".to_owned());
        }
        Ok(DistinguishedName(rdns))
    }

    /// The subject of a certificate, in its own order; `None` when a value is
    /// not a string type this can compare (it then matches no rule).
    pub fn of_certificate(name: &X509Name<'_>) -> Option<DistinguishedName> {
        let mut rdns = Vec::new();
        for rdn in name.iter() {
            let mut attributes = Vec::new();
            for attribute in rdn.iter() {
                attributes.push(Attribute {
                    oid: attribute.attr_type().to_id_string(),
                    value: attribute.as_str().ok()?.to_owned(),
                });
            }
            attributes.sort();
            rdns.push(attributes);
        }
        Some(DistinguishedName(rdns))
    }

    /// Whether a certificate's subject is this one: the same RDNs, in this order or the reverse.
    pub fn matches(&self, certificate: &DistinguishedName) -> bool {
        self.0 == certificate.0 || self.0.iter().rev().eq(certificate.0.iter())
    }
}

/// Splits at `separator` where it is not escaped, keeping the escapes for the next step.
fn split_unescaped(text: &str, separator: char) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => {
                let escaped = characters
                    .next()
                    .ok_or_else(|| "ends with a lone backslash".to_owned())?;
                let last = parts.last_mut().ok_or_else(|| "cannot be read".to_owned())?;
                last.push('\\');
                last.push(escaped);
            }
            character if character == separator => parts.push(String::new()),
            character => parts
                .last_mut()
                .ok_or_else(|| "cannot be read".to_owned())?
                .push(character),
        }
    }
    if parts.iter().any(|part| part.trim().is_empty()) {
        return Err(format!("has an empty part around {separator:?}"));
    }
    Ok(parts)
}

fn parse_attribute(text: &str) -> Result<Attribute, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{:?} is not TYPE=value", text.trim()))?;
    let name = name.trim();
    let oid = if name.chars().all(|c| c.is_ascii_digit() || c == '.') && name.contains('.') {
        name.to_owned()
    } else {
        ATTRIBUTE_TYPES
            .iter()
            .find(|(short, _)| short.eq_ignore_ascii_case(name))
            .map(|(_, oid)| (*oid).to_owned())
            .ok_or_else(|| format!("{name:?} is not an attribute type it knows (CN, O, OU, C, …, or a dotted OID)"))?
    };
    Ok(Attribute {
        oid,
        value: unescape(value)?,
    })
}

/// The value of an attribute: escapes resolved, unescaped spaces at its ends dropped.
fn unescape(text: &str) -> Result<String, String> {
    let text = text.trim_start_matches(' ');
    if text.starts_with('#') {
        return Err("hex-encoded (#…) values are not supported: write the value as text".to_owned());
    }
    let mut bytes = Vec::with_capacity(text.len());
    // How many bytes at the end are unescaped spaces (trimmed at the end).
    let mut trailing_spaces = 0;
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\\' {
            trailing_spaces = 0;
            let next = characters
                .next()
                .ok_or_else(|| "ends with a lone backslash".to_owned())?;
            if next.is_ascii_hexdigit() {
                let low = characters
                    .next()
                    .filter(char::is_ascii_hexdigit)
                    .ok_or_else(|| "has a \\ followed by one hex digit".to_owned())?;
                let pair = [next as u8, low as u8];
                let hex = std::str::from_utf8(&pair).map_err(|_| "has a bad escape".to_owned())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| "has a bad escape".to_owned())?);
            } else {
                let mut buffer = [0u8; 4];
                bytes.extend_from_slice(next.encode_utf8(&mut buffer).as_bytes());
            }
            continue;
        }
        if matches!(character, '"' | ';' | '<' | '>') {
            return Err(format!("has an unescaped {character:?}: write \\{character}"));
        }
        trailing_spaces = if character == ' ' { trailing_spaces + 1 } else { 0 };
        let mut buffer = [0u8; 4];
        bytes.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
    }
    bytes.truncate(bytes.len() - trailing_spaces);
    let value = String::from_utf8(bytes).map_err(|_| "is not UTF-8 once unescaped".to_owned())?;
    if value.is_empty() {
        return Err("has an empty value".to_owned());
    }
    Ok(value)
}

/// A subject alternative name, with its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    /// A DNS name (compared without regard to case).
    Dns(String),
    /// A URI, such as a SPIFFE id.
    Uri(String),
    /// An e-mail address.
    Email(String),
    /// An IP address.
    Ip(IpAddr),
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectAltName::Dns(name) => write!(f, "dns:{name}"),
            SubjectAltName::Uri(uri) => write!(f, "uri:{uri}"),
            SubjectAltName::Email(address) => write!(f, "email:{address}"),
            SubjectAltName::Ip(address) => write!(f, "ip:{address}"),
        }
    }
}

impl SubjectAltName {
    /// Reads a typed rule: `dns:billing.internal`, `uri:spiffe://acme/billing`,
    /// `email:ops@acme.example` or `ip:10.0.0.7`.
    ///
    /// # Errors
    /// What is wrong with it, in words.
    pub fn parse(text: &str) -> Result<SubjectAltName, String> {
        let text = text.trim();
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!(
                "{text:?} must say which kind of name it is: dns:{text}, uri:…, email:… or ip:…"
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{text:?} names nothing after its type"));
        }
        match kind.trim().to_ascii_lowercase().as_str() {
            "dns" => Ok(SubjectAltName::Dns(name.to_ascii_lowercase())),
            "uri" => Ok(SubjectAltName::Uri(name.to_owned())),
            "email" => Ok(SubjectAltName::Email(name.to_owned())),
            "ip" => name
                .parse()
                .map(SubjectAltName::Ip)
                .map_err(|_| format!("{name:?} is not an IP address")),
            _ => Err(format!(
                "{text:?} must say which kind of name it is: dns:, uri:, email: or ip:"
            )),
        }
    }

    fn of(name: &GeneralName<'_>) -> Option<SubjectAltName> {
        Some(match name {
            GeneralName::DNSName(name) => SubjectAltName::Dns(name.to_ascii_lowercase()),
            GeneralName::URI(uri) => SubjectAltName::Uri((*uri).to_owned()),
            GeneralName::RFC822Name(address) => SubjectAltName::Email((*address).to_owned()),
            GeneralName::IPAddress(bytes) => SubjectAltName::Ip(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                _ => return None,
            }),
            _ => return None,
        })
    }
}

/// Who a client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject; `None` when it holds a value this cannot compare.
    pub subject: Option<DistinguishedName>,
    /// Its subject alternative names of the four kinds rules can name.
    pub sans: Vec<SubjectAltName>,
    /// When it stops being valid: a connection opened before then names
    /// nobody afterwards.
    pub not_after: Option<SystemTime>,
}

impl PeerIdentity {
    /// The identity in a DER certificate; `None` when it cannot be parsed.
    pub fn of_certificate(der: &[u8]) -> Option<PeerIdentity> {
        let (_, parsed) = X509Certificate::from_der(der).ok()?;
        let sans = match parsed.subject_alternative_name() {
            Ok(Some(extension)) => extension
                .value
                .general_names
                .iter()
                .filter_map(SubjectAltName::of)
                .collect(),
            _ => Vec::new(),
        };
        let not_after = u64::try_from(parsed.validity().not_after.timestamp())
            .ok()
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds));
        Some(PeerIdentity {
            subject: DistinguishedName::of_certificate(parsed.subject()),
            sans,
            not_after,
        })
    }

    /// Whether the certificate has expired (the handshake checked it then; a
    /// connection can outlive it).
    pub fn expired(&self) -> bool {
        self.not_after.is_some_and(|not_after| SystemTime::now() > not_after)
    }
}

#[cfg(test)]
mod tests {
    use super::{Attribute, DistinguishedName, SubjectAltName};

    fn rdn(oid: &str, value: &str) -> Vec<Attribute> {
        vec![Attribute {
            oid: oid.to_owned(),
            value: value.to_owned(),
        }]
    }

    #[test]
    fn subjects_are_read_as_rdn_sequences_with_escapes() {
        let two = DistinguishedName::parse("CN=billing, O=Acme").unwrap();
        assert_eq!(
            two,
            DistinguishedName(vec![rdn("2.5.4.3", "billing"), rdn("2.5.4.10", "Acme")])
        );
        let one = DistinguishedName::parse(r"CN=billing\,O=Acme").unwrap();
        assert_eq!(one, DistinguishedName(vec![rdn("2.5.4.3", "billing,O=Acme")]));
        assert_eq!(
            DistinguishedName::parse(r"CN=a\2Cb").unwrap(),
            DistinguishedName(vec![rdn("2.5.4.3", "a,b")])
        );
        assert_eq!(
            DistinguishedName::parse("2.5.4.3=x").unwrap(),
            DistinguishedName(vec![rdn("2.5.4.3", "x")])
        );
        assert!(!two.matches(&one) && !one.matches(&two));
        let reversed = DistinguishedName(vec![rdn("2.5.4.10", "Acme"), rdn("2.5.4.3", "billing")]);
        assert!(two.matches(&reversed), "certificate order is the reverse of RFC 4514's");
        assert_eq!(two.to_string(), "CN=billing,O=Acme");
        assert_eq!(one.to_string(), r"CN=billing\,O=Acme");
    }

    #[test]
    fn bad_subjects_are_refused() {
        for bad in [
            "",
            "CN",
            "XX=a",
            "CN=",
            "CN=#0403",
            r"CN=a\",
            "CN=a,,O=b",
            "CN=a;O=b",
            "CN=\"a\"",
        ] {
            assert!(DistinguishedName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn alternative_names_are_typed() {
        assert_eq!(
            SubjectAltName::parse("dns:Billing.Internal").unwrap(),
            SubjectAltName::Dns("billing.internal".to_owned())
        );
        assert!(SubjectAltName::parse("billing.internal").is_err());
        assert!(SubjectAltName::parse("ip:not-an-ip").is_err());
        assert_eq!(SubjectAltName::parse("ip:10.0.0.7").unwrap().to_string(), "ip:10.0.0.7");
        assert_ne!(
            SubjectAltName::parse("uri:billing").unwrap(),
            SubjectAltName::parse("dns:billing").unwrap()
        );
    }
}

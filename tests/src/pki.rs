//! A private CA made for one test: a server certificate for 127.0.0.1, a
//! client certificate for mTLS, and a second CA that signed neither, for
//! the collector an agent must refuse.

use std::path::{Path, PathBuf};

use openssl::{
    asn1::Asn1Time,
    bn::BigNum,
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::Rsa,
    x509::{
        extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName},
        X509Name, X509,
    },
};

use crate::TempDir;

pub struct Pki {
    pub dir: TempDir,
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub stranger_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Common name `zerospan-agent`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

struct Issued {
    cert: X509,
    key: PKey<Private>,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn name(cn: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

/// A certificate for `cn`, signed by `issuer` (self-signed CA if `None`).
fn issue(cn: &str, issuer: Option<&Issued>, leaf: Option<LeafKind>) -> Issued {
    let key = key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_serial()).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(issuer.map_or(&name(cn), |i| i.cert.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match leaf {
        None => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        }
        Some(kind) => {
            b.append_extension(BasicConstraints::new().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let usage = match kind {
                LeafKind::Server => ExtendedKeyUsage::new().server_auth().build(),
                LeafKind::Client => ExtendedKeyUsage::new().client_auth().build(),
            };
            b.append_extension(usage.unwrap()).unwrap();
            if kind == LeafKind::Server {
                let san = SubjectAlternativeName::new()
                    .ip("127.0.0.1")
                    .dns("localhost")
                    .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
                    .unwrap();
                b.append_extension(san).unwrap();
            }
        }
    }
    let signer = issuer.map_or(&key, |i| &i.key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    Issued {
        cert: b.build(),
        key,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LeafKind {
    Server,
    Client,
}

fn rand_serial() -> u32 {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).unwrap();
    u32::from_le_bytes(b) >> 1
}

fn write(dir: &Path, file: &str, pem: Vec<u8>) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, pem).unwrap();
    p
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let ca = issue("zerospan test CA", None, None);
        let stranger = issue("some other CA", None, None);
        let server = issue("127.0.0.1", Some(&ca), Some(LeafKind::Server));
        let client = issue("zerospan-agent", Some(&ca), Some(LeafKind::Client));
        let d = &dir.0;
        Pki {
            ca: write(d, "ca.pem", ca.cert.to_pem().unwrap()),
            stranger_ca: write(d, "stranger.pem", stranger.cert.to_pem().unwrap()),
            server_cert: write(d, "server.pem", server.cert.to_pem().unwrap()),
            server_key: write(
                d,
                "server.key",
                server.key.private_key_to_pem_pkcs8().unwrap(),
            ),
            client_cert: write(d, "client.pem", client.cert.to_pem().unwrap()),
            client_key: write(
                d,
                "client.key",
                client.key.private_key_to_pem_pkcs8().unwrap(),
            ),
            dir,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

//! A test certificate authority: server certificates for 127.0.0.1, written as a mounted
//! Secret is updated (beside, then renamed over), for the tests that run tollgate over TLS.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A test CA and a way to issue server certificates for 127.0.0.1 under it.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a leaf for 127.0.0.1 and writes it to `tls.crt`/`tls.key` (replacing any
    /// previous one, as a Secret update does); returns its DER.
    pub fn issue(&self, serial: u64) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        // Written beside, then renamed over: readers never see half a file.
        for (name, text) in [("tls.key", key.serialize_pem()), ("tls.crt", leaf.pem())] {
            let tmp = self.dir.path().join(format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
        }
        leaf.der().to_vec()
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

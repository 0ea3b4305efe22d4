//! The certificate QUIC presents: from the configuration, or a self-signed
//! one generated in `data_dir/tls` on first start and reused afterwards.

use std::path::Path;

use anyhow::Context as _;
use conclave_config::Config;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

const TLS_DIR: &str = "tls";
const GENERATED_CERT_FILE: &str = "quic-cert.pem";
const GENERATED_KEY_FILE: &str = "quic-key.pem";

pub(crate) struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    pub fn load_or_generate(config: &Config) -> anyhow::Result<Self> {
        let (cert_path, key_path) = match (&config.tls.cert_path, &config.tls.key_path) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let dir = config.data_dir.join(TLS_DIR);
                let cert = dir.join(GENERATED_CERT_FILE);
                let key = dir.join(GENERATED_KEY_FILE);
                if !cert.exists() || !key.exists() {
                    generate(&dir, &cert, &key)?;
                }
                (cert, key)
            }
        };
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert_path.display()))?;
        if chain.is_empty() {
            anyhow::bail!("{} holds no certificate", cert_path.display());
        }
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        Ok(Self { chain, key })
    }

    /// SHA-256 of the leaf certificate, hex: what a client pins.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
            .unwrap_or_default()
    }
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    crate::secrets::write_private(key_path, &generated.key_pair.serialize_pem())?;
    crate::secrets::write_private(cert_path, &generated.cert.pem())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed QUIC certificate (set tls.cert_path for production)");
    Ok(())
}

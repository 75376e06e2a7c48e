//! A private PKI for tests, made with the `openssl` CLI: a CA and leaf certificates signed
//! by it (EC P-256, `CA:FALSE`), as PEM files in one directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool;

/// A CA (`ca.crt`, `ca.key`) and the leaves made with [`Pki::cert`].
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A new CA (`/CN=edgepipe-test-ca`) in `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki directory");
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.cert("ca", "/CN=edgepipe-test-ca", &[]);
        pki
    }

    /// The PKI already in `dir` (its CA made by [`Pki::new`]), to sign more leaves.
    pub fn open(dir: &Path) -> Pki {
        assert!(dir.join("ca.crt").is_file(), "no CA in {}", dir.display());
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// `<name>.key` and `<name>.crt`, valid for 7 days: the CA itself (`name == "ca"`,
    /// self-signed), or a leaf signed by it with `extensions`.
    pub fn cert(&self, name: &str, subject: &str, extensions: &[&str]) {
        self.cert_for_days(name, subject, extensions, 7);
    }

    /// Like [`Pki::cert`], valid for `days` from now (a certificate about to expire, or a
    /// renewed one that outlives the first).
    pub fn cert_for_days(&self, name: &str, subject: &str, extensions: &[&str], days: u32) {
        let days = days.to_string();
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            &days,
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &crt,
        ];
        if name != "ca" {
            // Without the constraints, openssl's default `v3_ca` section marks the leaf a
            // CA, which Go accepts and rustls (the operator's client) rightly refuses.
            args.extend_from_slice(&[
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
            ]);
        }
        for ext in extensions {
            args.extend_from_slice(&["-addext", ext]);
        }
        self.openssl(&args);
    }

    /// `<name>.key` and `<name>.crt`: a leaf signed by the CA that expired in 2020 (valid
    /// from 2020-01-01 to 2020-01-02), through `openssl ca`, the one command that takes
    /// explicit dates.
    pub fn expired_cert(&self, name: &str, subject: &str) {
        let conf = format!("{name}-ca.cnf");
        std::fs::write(
            self.dir.join(&conf),
            "[ca]\ndefault_ca = ca_default\n[ca_default]\ndir = .\ndatabase = index.txt\n\
             new_certs_dir = .\ncertificate = ca.crt\nprivate_key = ca.key\nserial = serial\n\
             default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n\
             [leaf]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n",
        )
        .expect("ca config");
        std::fs::write(self.dir.join("index.txt"), "").expect("ca index");
        std::fs::write(self.dir.join("serial"), "1000\n").expect("ca serial");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            &conf,
            "-extensions",
            "leaf",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-in",
            &csr,
            "-out",
            &crt,
        ]);
    }

    /// Runs `openssl` in the PKI directory; panics with its output when it fails.
    pub fn openssl(&self, args: &[&str]) {
        let out = Command::new(tool("openssl"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The path of `file` in the PKI directory, as a string.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

//! cloud-init user-data and meta-data generated from a recipe's [seed] fields. Scalars are
//! written as JSON strings, which are valid YAML double-quoted scalars, so no value can
//! break the document's structure.

use crate::recipe::Seed;

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// `#cloud-config` user-data for `seed`. `password_hash` (SHA-512 crypt) is the hashed
/// `seed.password`, if one was given.
pub fn user_data(seed: &Seed, password_hash: Option<&str>) -> String {
    let mut out = String::from("#cloud-config\n");
    if let Some(h) = &seed.hostname {
        out.push_str(&format!("hostname: {}\npreserve_hostname: false\n", q(h)));
    }
    let keys = &seed.ssh_authorized_keys;
    match &seed.user {
        Some(user) => {
            out.push_str("users:\n  - default\n");
            out.push_str(&format!("  - name: {}\n    shell: /bin/bash\n", q(user)));
            out.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
            if let Some(h) = password_hash {
                out.push_str(&format!("    lock_passwd: false\n    passwd: {}\n", q(h)));
            }
            if !keys.is_empty() {
                out.push_str("    ssh_authorized_keys:\n");
                for k in keys {
                    out.push_str(&format!("      - {}\n", q(k)));
                }
            }
        }
        None => {
            if !keys.is_empty() {
                out.push_str("ssh_authorized_keys:\n");
                for k in keys {
                    out.push_str(&format!("  - {}\n", q(k)));
                }
            }
            if let Some(h) = password_hash {
                out.push_str("chpasswd:\n  expire: false\n  users:\n");
                out.push_str(&format!(
                    "    - name: root\n      password: {}\n      type: hash\n",
                    q(h)
                ));
            }
        }
    }
    if password_hash.is_some() {
        out.push_str("ssh_pwauth: true\n");
    }
    if !seed.packages.is_empty() {
        out.push_str("packages:\n");
        for p in &seed.packages {
            out.push_str(&format!("  - {}\n", q(p)));
        }
    }
    out
}

/// NoCloud meta-data: an instance id (a new one makes cloud-init run again) and hostname.
pub fn meta_data(instance_id: &str, hostname: Option<&str>) -> String {
    let mut out = format!("instance-id: {}\n", q(instance_id));
    if let Some(h) = hostname {
        out.push_str(&format!("local-hostname: {}\n", q(h)));
    }
    out
}

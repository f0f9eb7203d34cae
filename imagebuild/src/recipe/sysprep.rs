//! virt-sysprep's operations (`virt-sysprep --list-operations`) and which run by default.

/// (name, enabled by default)
pub const OPERATIONS: &[(&str, bool)] = &[
    ("abrt-data", true),
    ("backup-files", true),
    ("bash-history", true),
    ("blkid-tab", true),
    ("ca-certificates", false),
    ("crash-data", true),
    ("cron-spool", true),
    ("customize", true),
    ("dhcp-client-state", true),
    ("dhcp-server-state", true),
    ("dovecot-data", true),
    ("firewall-rules", false),
    ("flag-reconfiguration", false),
    ("fs-uuids", false),
    ("ipa-client", true),
    ("kerberos-data", false),
    ("kerberos-hostkeys", true),
    ("logfiles", true),
    ("lvm-system-devices", true),
    ("lvm-uuids", true),
    ("machine-id", true),
    ("mail-spool", true),
    ("net-hostname", true),
    ("net-hwaddr", true),
    ("net-nmconn", true),
    ("pacct-log", true),
    ("package-manager-cache", true),
    ("pam-data", true),
    ("passwd-backups", true),
    ("puppet-data-log", true),
    ("rh-subscription-manager", true),
    ("rhn-systemid", true),
    ("rpm-db", true),
    ("samba-db-log", true),
    ("script", true),
    ("smolt-uuid", true),
    ("ssh-hostkeys", true),
    ("ssh-userdir", true),
    ("sssd-db-log", true),
    ("tmp-files", true),
    ("udev-persistent-net", true),
    ("user-account", false),
    ("utmp", true),
    ("yum-uuid", true),
];

pub fn names() -> impl Iterator<Item = &'static str> {
    OPERATIONS.iter().map(|(n, _)| *n)
}

pub fn is_known(name: &str) -> bool {
    OPERATIONS.iter().any(|(n, _)| *n == name)
}

/// The default set plus `enable`, minus `disable`, in catalog order.
pub fn resolve(enable: &[&str], disable: &[&str]) -> Vec<&'static str> {
    OPERATIONS
        .iter()
        .filter(|(n, default)| (*default || enable.contains(n)) && !disable.contains(n))
        .map(|(n, _)| *n)
        .collect()
}

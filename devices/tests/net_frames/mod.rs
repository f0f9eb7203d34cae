//! Ethernet/IPv4/ARP/ICMP/UDP/DHCP frames built and parsed by hand for backend tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;

pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// UDP with checksum 0 ("none"), which IPv4 allows.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn dhcp_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80; // broadcast reply
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    b.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    b.extend_from_slice(&[55, 3, 1, 3, 6]); // ask for mask, router, DNS
    b.push(255);
    b.resize(300, 0);
    let ip = ipv4(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        17,
        &udp(68, 67, &b),
    );
    eth(BROADCAST, mac, ETH_IPV4, &ip)
}

/// (message type, yiaddr) of a DHCP reply to `xid`, if `frame` is one.
pub fn parse_dhcp_reply(frame: &[u8], xid: u32) -> Option<(u8, Ipv4Addr)> {
    let ip = ipv4_payload(frame, 17)?;
    let udp = ip.get(8..)?;
    if ip.get(0..4)? != [0, 67, 0, 68] {
        return None;
    }
    if udp.first()? != &2 || udp.get(4..8)? != xid.to_be_bytes() {
        return None;
    }
    let yiaddr = Ipv4Addr::from(<[u8; 4]>::try_from(udp.get(16..20)?).ok()?);
    let mut opts = udp.get(240..)?;
    while let [code, rest @ ..] = opts {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let len = *rest.first()? as usize;
                let val = rest.get(1..1 + len)?;
                if *code == 53 {
                    return Some((val[0], yiaddr));
                }
                opts = &rest[1 + len..];
            }
        }
    }
    None
}

/// Payload of an IPv4 packet of protocol `proto` in an Ethernet frame.
pub fn ipv4_payload(frame: &[u8], proto: u8) -> Option<&[u8]> {
    if frame.get(12..14)? != ETH_IPV4.to_be_bytes() {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != proto {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    ip.get(ihl..total)
}

pub fn ipv4_src(frame: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(
        <[u8; 4]>::try_from(frame.get(26..30)?).ok()?,
    ))
}

pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    let dst = if op == 1 { BROADCAST } else { tha };
    eth(dst, sha, ETH_ARP, &a)
}

/// (op, sender MAC, sender IP, target IP) of an ARP frame.
pub fn parse_arp(frame: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
    if frame.get(12..14)? != ETH_ARP.to_be_bytes() {
        return None;
    }
    let a = frame.get(14..42)?;
    let op = u16::from_be_bytes([a[6], a[7]]);
    let sha: [u8; 6] = a[8..14].try_into().ok()?;
    let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    Some((op, sha, spa, tpa))
}

/// ICMP echo (type 8) or echo reply (type 0).
pub fn icmp_echo(kind: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// TCP (source port, destination port, flags) of a frame.
pub fn parse_tcp(frame: &[u8]) -> Option<(u16, u16, u8)> {
    let t = ipv4_payload(frame, 6)?;
    Some((
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        *t.get(13)?,
    ))
}

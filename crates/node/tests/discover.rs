//! Finding pod network namespaces by address, on real namespaces (root and iproute2; skipped
//! otherwise). Addresses are from 198.18.0.0/15 and unique to each test.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{NetnsDir, TestNs};
use strait_node::{Discovery, Resolution};

fn v4(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, a, b)
}

fn found(resolution: Resolution) -> strait_node::Found {
    match resolution {
        Resolution::Found(found) => found,
        other => panic!("not found: {other:?}"),
    }
}

#[test]
fn finds_a_namespace_made_with_ip_netns_add_by_its_address_and_misses_unknown_ones() {
    if let Some(reason) = common::unsupported() {
        eprintln!("skipping: {reason}");
        return;
    }
    common::clean_stale();
    let ns = TestNs::new("find", Some(v4(254, 1)));
    // The real directory `ip netns add` (and container runtimes) use.
    let mut discovery = Discovery::new("/run/netns");
    let hit = found(discovery.resolve(IpAddr::V4(v4(254, 1))).unwrap());
    assert_eq!(hit.path, ns.path());
    assert!(hit.netns.same_as(&ns.handle()));

    match discovery.resolve(IpAddr::V4(v4(254, 99))).unwrap() {
        Resolution::Missing { .. } => {}
        other => panic!("an unknown address resolved: {other:?}"),
    }
}

#[test]
fn rescans_enter_only_new_files_and_odd_files_are_skipped() {
    if let Some(reason) = common::unsupported() {
        eprintln!("skipping: {reason}");
        return;
    }
    common::clean_stale();
    let a = TestNs::new("cache-a", Some(v4(254, 11)));
    let dir = NetnsDir::new("cache");
    dir.link("cni-a", &a.path());
    // Things a namespace directory can also hold: none of them fails the scan.
    std::fs::write(dir.0.join("not-a-netns"), b"").unwrap();
    std::fs::create_dir(dir.0.join("a-directory")).unwrap();
    dir.link("dangling", &dir.0.join("gone"));
    nix::unistd::mkfifo(&dir.0.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let mut discovery = Discovery::new(&dir.0).with_min_rescan(Duration::ZERO);
    let hit = found(discovery.resolve(IpAddr::V4(v4(254, 11))).unwrap());
    assert_eq!(hit.path, dir.0.join("cni-a"));
    assert!(hit.netns.same_as(&a.handle()));

    // Nothing new: a rescan enters no namespace.
    assert_eq!(discovery.scan(false).unwrap(), 0);
    // A new sandbox: only it is entered.
    let b = TestNs::new("cache-b", None);
    dir.link("cni-b", &b.path());
    assert_eq!(discovery.scan(false).unwrap(), 1);

    // b got its address after it was first scanned (the network plugin runs after the
    // runtime made the namespace): a miss enters it again and finds it.
    b.add_address(v4(254, 12));
    let hit = found(discovery.resolve(IpAddr::V4(v4(254, 12))).unwrap());
    assert!(hit.netns.same_as(&b.handle()));

    // A vanished file is forgotten: its address no longer resolves.
    dir.unlink("cni-a");
    match discovery.resolve(IpAddr::V4(v4(254, 11))).unwrap() {
        Resolution::Missing { scanned: true } => {}
        other => panic!("a removed namespace file still resolves: {other:?}"),
    }
}

#[test]
fn a_sandbox_whose_interface_was_removed_no_longer_claims_the_address() {
    if let Some(reason) = common::unsupported() {
        eprintln!("skipping: {reason}");
        return;
    }
    common::clean_stale();
    let old = TestNs::new("moved-old", Some(v4(254, 21)));
    let dir = NetnsDir::new("moved");
    dir.link("cni-old", &old.path());
    let mut discovery = Discovery::new(&dir.0).with_min_rescan(Duration::ZERO);
    assert!(
        found(discovery.resolve(IpAddr::V4(v4(254, 21))).unwrap())
            .netns
            .same_as(&old.handle())
    );
    // The sandbox is recreated: the old one loses its interface (its file lingers), the new
    // one gets the same address.
    old.remove_interface();
    let new = TestNs::new("moved-new", Some(v4(254, 21)));
    dir.link("cni-new", &new.path());
    std::thread::sleep(Duration::from_millis(300));
    let hit = found(discovery.resolve(IpAddr::V4(v4(254, 21))).unwrap());
    assert!(
        hit.netns.same_as(&new.handle()),
        "the new sandbox is served"
    );
}

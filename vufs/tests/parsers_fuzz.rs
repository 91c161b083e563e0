//! The parsers that read user-controlled text: a layer's vstat files (anyone who can write the
//! layer directory writes them) and the `-o` option string. Arbitrary input must never panic,
//! and what vufs writes must read back as written.

use proptest::prelude::*;
use vufs::layer::VStat;
use vufs::Options;

fn kind() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(libc::S_IFREG)),
        Just(Some(libc::S_IFSOCK)),
        Just(Some(libc::S_IFCHR)),
        Just(Some(libc::S_IFBLK)),
    ]
}

fn vstat() -> impl Strategy<Value = VStat> {
    (
        kind(),
        proptest::option::of(0u32..0o7777),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of((any::<u32>(), any::<u32>())),
        proptest::option::of((any::<u32>(), any::<u32>())),
        proptest::option::of((0i64..i64::from(u32::MAX), 0i64..1_000_000_000)),
    )
        .prop_map(|(kind, mode, uid, gid, rdev, dev, ctime)| VStat {
            kind,
            mode,
            uid,
            gid,
            rdev,
            dev,
            ctime,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_vstat_bytes_parse_without_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = VStat::parse(&data);
    }

    #[test]
    fn vstat_like_text_parses_without_panic(text in "([a-z]{0,6}=[0-9a-fxX,\\- ]{0,24}\n){0,12}") {
        let _ = VStat::parse(text.as_bytes());
    }

    #[test]
    fn what_vufs_writes_reads_back(v in vstat()) {
        prop_assert_eq!(VStat::parse(v.render().as_bytes()), v);
    }

    #[test]
    fn any_option_string_parses_or_is_refused_without_panic(text in "[a-z=/,.\\-]{0,40}") {
        let _ = Options::parse(&text);
    }
}

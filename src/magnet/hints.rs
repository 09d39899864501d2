//! What a magnet link adds to the torrent it names: its trackers (`tr`) and web seeds (`ws`,
//! BEP 19). Neither is part of the info dictionary the swarm sends, so the link is the only
//! place they come from; they are added whether the metadata was just fetched or read from the
//! metadata cache, so a remount of the same link uses them too.

use crate::magnet::link::Magnet;
use crate::metainfo::Torrent;

impl Magnet {
    /// `torrent` with the link's trackers and web seeds after its own, each URL once. The
    /// torrent's own come first: its creator named them, and the session uses only the first
    /// few web seeds of a long list.
    pub fn add_hints_to(&self, mut torrent: Torrent) -> Torrent {
        for tr in &self.trackers {
            if !torrent.trackers.iter().flatten().any(|x| x == tr) {
                torrent.trackers.push(vec![tr.clone()]);
            }
        }
        // Compared as written: a trailing `/` changes what BEP 19 asks a server for.
        for ws in &self.web_seeds {
            if !torrent.url_list.contains(ws) {
                torrent.url_list.push(ws.clone());
            }
        }
        torrent
    }
}

#[cfg(test)]
mod tests {
    use crate::bencode::Encoder;
    use crate::magnet::Magnet;
    use crate::metainfo::Torrent;

    /// A one-file torrent whose top level has `url_list` and one tracker.
    fn torrent(url_list: &[&str]) -> Torrent {
        let mut info = Encoder::new();
        info.begin_dict()
            .str("length")
            .int(5)
            .str("name")
            .str("f")
            .str("piece length")
            .int(16384)
            .str("pieces")
            .bytes(&[7; 20])
            .end();
        let info = info.finish();
        let mut e = Encoder::new();
        e.begin_dict()
            .str("announce")
            .str("http://t.example/announce")
            .str("info")
            .raw(&info);
        e.str("url-list").begin_list();
        for u in url_list {
            e.str(u);
        }
        e.end().end();
        Torrent::from_bytes(&e.finish()).unwrap()
    }

    fn magnet(t: &Torrent, params: &str) -> Magnet {
        Magnet::parse(&format!("magnet:?xt=urn:btih:{}{params}", t.info_hash)).unwrap()
    }

    #[test]
    fn web_seeds_of_the_link_follow_the_torrents_own_each_once() {
        let t = torrent(&["http://a.example/", "http://b.example/"]);
        let m = magnet(
            &t,
            "&ws=http%3A%2F%2Fc.example%2F&ws=http://b.example/&ws=http://a.example\
             &ws=http%3A%2F%2Fc.example%2F",
        );
        let t = m.add_hints_to(t);
        assert_eq!(
            t.url_list,
            [
                "http://a.example/",
                "http://b.example/",
                "http://c.example/",
                // Not the same URL as `http://a.example/`: for a one-file torrent BEP 19
                // appends the name only after a trailing slash.
                "http://a.example",
            ]
        );
    }

    #[test]
    fn a_torrent_without_web_seeds_gets_the_links_and_trackers_are_merged_alike() {
        let t = torrent(&[]);
        assert!(t.url_list.is_empty());
        let m = magnet(
            &t,
            "&ws=https://w.example/d/&tr=http://t.example/announce&tr=udp://u.example:1",
        );
        let t = m.add_hints_to(t);
        assert_eq!(t.url_list, ["https://w.example/d/"]);
        assert_eq!(
            t.trackers,
            [
                vec!["http://t.example/announce".to_string()],
                vec!["udp://u.example:1".to_string()],
            ]
        );
    }

    #[test]
    fn a_link_without_web_seeds_changes_nothing() {
        let t = torrent(&["http://a.example/"]);
        let m = magnet(&t, "");
        assert_eq!(m.add_hints_to(t).url_list, ["http://a.example/"]);
    }
}

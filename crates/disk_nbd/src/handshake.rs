//! The fixed-newstyle handshake: option haggling until the client enters
//! transmission or leaves.

use std::io;

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::protocol::*;
use crate::server::Export;
use crate::server::NbdError;
use crate::server::drain;

/// Option data up to this size is read and parsed.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Option data above [`MAX_OPTION_DATA`] and up to this size is skipped and
/// refused; anything larger ends the connection.
const MAX_OPTION_DRAIN: u32 = 16 << 20;

/// How the handshake ended.
pub(crate) enum Negotiated {
    /// The client entered transmission.
    Transmit,
    /// The session ends without transmission.
    Close,
}

impl Export {
    /// Whether a client asking for `name` gets this export.
    fn accepts(&self, name: &[u8]) -> bool {
        match &self.name {
            None => true,
            Some(n) => name.is_empty() || name == n.as_bytes(),
        }
    }

    fn canonical_name<'a>(&'a self, asked: &'a [u8]) -> &'a [u8] {
        match &self.name {
            Some(n) => n.as_bytes(),
            None => asked,
        }
    }
}

async fn write_option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut h = [0u8; 20];
    h[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&option.to_be_bytes());
    h[12..16].copy_from_slice(&reply.to_be_bytes());
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("option reply too long"))?;
    h[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h).await?;
    w.write_all(data).await
}

/// Parses the data of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the
/// list of requested information types.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut c = Cursor::new(data);
    let name_len = c.u32()? as usize;
    if name_len > MAX_STRING_LEN {
        return None;
    }
    let name = c.take(name_len)?;
    let n = c.u16()?;
    let mut infos = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        infos.push(c.u16()?);
    }
    c.is_empty().then_some((name, infos))
}

/// Runs the handshake with one client, from the server's greeting to the
/// option that ends it.
pub(crate) async fn handshake<R, W>(
    export: &Export,
    r: &mut R,
    w: &mut W,
) -> Result<Negotiated, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    let mut data = Vec::new();
    loop {
        let magic = r.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_DATA {
            if len > MAX_OPTION_DRAIN {
                return Err(NbdError::Protocol(format!(
                    "option {option} carries {len} bytes of data"
                )));
            }
            drain(r, u64::from(len)).await?;
            let reply = if matches!(option, OPT_EXPORT_NAME | OPT_LIST | OPT_INFO | OPT_GO) {
                REP_ERR_TOO_BIG
            } else {
                REP_ERR_UNSUP
            };
            if option == OPT_EXPORT_NAME {
                // No error reply exists for NBD_OPT_EXPORT_NAME.
                return Ok(Negotiated::Close);
            }
            write_option_reply(w, option, reply, b"option data too large").await?;
            w.flush().await?;
            continue;
        }
        data.resize(len as usize, 0);
        r.read_exact(&mut data).await?;

        match option {
            OPT_EXPORT_NAME => {
                if data.len() > MAX_STRING_LEN || !export.accepts(&data) {
                    tracing::debug!("NBD client asked for an unknown export; closing");
                    return Ok(Negotiated::Close);
                }
                let mut reply = [0u8; 10 + 124];
                reply[0..8].copy_from_slice(&export.size.to_be_bytes());
                reply[8..10].copy_from_slice(&export.transmission_flags.to_be_bytes());
                let n = if no_zeroes { 10 } else { reply.len() };
                w.write_all(&reply[..n]).await?;
                w.flush().await?;
                return Ok(Negotiated::Transmit);
            }
            OPT_ABORT => {
                // The client may already be gone; the session ends either way.
                let _ = write_option_reply(w, option, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(Negotiated::Close);
            }
            OPT_LIST => {
                if data.is_empty() {
                    let name = export.name.as_deref().unwrap_or("").as_bytes();
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name);
                    write_option_reply(w, option, REP_SERVER, &d).await?;
                    write_option_reply(w, option, REP_ACK, &[]).await?;
                } else {
                    write_option_reply(w, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                        .await?;
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => {
                    write_option_reply(w, option, REP_ERR_INVALID, b"malformed info request")
                        .await?;
                }
                Some((name, _)) if !export.accepts(name) => {
                    write_option_reply(w, option, REP_ERR_UNKNOWN, b"no such export").await?;
                }
                Some((name, infos)) => {
                    let mut d = Vec::with_capacity(16);
                    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    d.extend_from_slice(&export.size.to_be_bytes());
                    d.extend_from_slice(&export.transmission_flags.to_be_bytes());
                    write_option_reply(w, option, REP_INFO, &d).await?;

                    // Sent whether or not it was asked for: the server
                    // accepts any alignment, so a client that ignores it
                    // loses nothing, and one that honours it aligns.
                    let bs = export.block_sizes;
                    d.clear();
                    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    d.extend_from_slice(&bs.minimum.to_be_bytes());
                    d.extend_from_slice(&bs.preferred.to_be_bytes());
                    d.extend_from_slice(&bs.maximum.to_be_bytes());
                    write_option_reply(w, option, REP_INFO, &d).await?;

                    if infos.contains(&INFO_NAME) {
                        d.clear();
                        d.extend_from_slice(&INFO_NAME.to_be_bytes());
                        d.extend_from_slice(export.canonical_name(name));
                        write_option_reply(w, option, REP_INFO, &d).await?;
                    }
                    if infos.contains(&INFO_DESCRIPTION)
                        && let Some(desc) = &export.description
                    {
                        d.clear();
                        d.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                        d.extend_from_slice(desc.as_bytes());
                        write_option_reply(w, option, REP_INFO, &d).await?;
                    }
                    write_option_reply(w, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        w.flush().await?;
                        return Ok(Negotiated::Transmit);
                    }
                }
            },
            _ => {
                // Includes NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, the
                // metadata context options and NBD_OPT_EXTENDED_HEADERS:
                // this server speaks simple replies only.
                write_option_reply(w, option, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
        w.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &[u8], n: u16, infos: &[u16], extra: &[u8]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&n.to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d.extend_from_slice(extra);
        d
    }

    #[test]
    fn info_requests_are_parsed_strictly() {
        let d = info(b"disk", 2, &[INFO_NAME, INFO_BLOCK_SIZE], &[]);
        let (name, infos) = parse_info_request(&d).unwrap();
        assert_eq!(name, b"disk");
        assert_eq!(infos, [INFO_NAME, INFO_BLOCK_SIZE]);
        // Fewer info entries than announced, trailing bytes, a name longer
        // than the data or than the protocol allows: all invalid.
        assert!(parse_info_request(&info(b"disk", 3, &[1, 2], &[])).is_none());
        assert!(parse_info_request(&info(b"disk", 0, &[], &[0])).is_none());
        assert!(parse_info_request(&[0, 0, 0, 9, b'a', 0, 0]).is_none());
        let long = vec![b'x'; MAX_STRING_LEN + 1];
        assert!(parse_info_request(&info(&long, 0, &[], &[])).is_none());
        assert!(parse_info_request(&[]).is_none());
    }
}

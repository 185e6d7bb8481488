//! The one place that speaks `netgauze-bgp-pkt`: bytes ↔ BGP messages (here),
//! our OPEN and what the peer's OPEN offers (`open`), and UPDATEs ↔ the speaker's
//! route model (`update`).
//!
//! Everything a peer sends is checked here before the rest of the speaker sees it:
//! a malformed message becomes the NOTIFICATION RFC 4271 §6 asks for (never a
//! panic), a well-formed one becomes [`RouteChange`](super::route::RouteChange)s.

mod open;
mod update;

use std::collections::HashMap;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::notification::{
    CeaseError, FiniteStateMachineError, HoldTimerExpiredError, MessageHeaderError,
    OpenMessageError, UpdateMessageError,
};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

pub use netgauze_bgp_pkt::notification::BgpNotificationMessage as Notification;
pub use open::{LocalOpen, PeerOpen, open_message, read_open};
pub use update::{UpdateContext, decode_update, encode_updates, end_of_rib};

/// The 2-byte AS a 4-byte-AS speaker puts where a 2-byte AS is expected (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// The message type octet of an UPDATE (the header's last byte).
pub const TYPE_UPDATE: u8 = 2;
/// RFC 4271's limit; extended messages (RFC 8654) are not offered.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Serializes a message; fails only on a message we built too large, which is a bug
/// in the caller's splitting.
pub fn encode(msg: &BgpMessage) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(msg.len());
    msg.write(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// The length of the whole message a 19-byte header announces, after checking the
/// marker and the length bounds (RFC 4271 §6.1).
pub fn frame_length(header: &[u8; HEADER_LEN]) -> Result<usize, Notification> {
    if header[..16].iter().any(|b| *b != 0xff) {
        return Err(Notification::MessageHeaderError(
            MessageHeaderError::ConnectionNotSynchronized {
                value: Box::new([]),
            },
        ));
    }
    let length = u16::from_be_bytes([header[16], header[17]]);
    if (length as usize) < HEADER_LEN || length as usize > MAX_MESSAGE_LEN {
        return Err(Notification::MessageHeaderError(
            MessageHeaderError::BadMessageLength {
                value: length.to_be_bytes().into(),
            },
        ));
    }
    Ok(length as usize)
}

/// Parses one whole message (header included). `asn4`: AS_PATHs carry 4-byte ASNs,
/// as negotiated in the OPENs.
pub fn decode(frame: &[u8], asn4: bool) -> Result<BgpMessage, Notification> {
    let mut ctx = BgpParsingContext::new(
        asn4,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        false,
        true,
    );
    let mut reader = SliceReader::new(frame);
    BgpMessage::parse(&mut reader, &mut ctx).map_err(Notification::from)
}

/// NOTIFICATION code and subcode, for logs and tests (RFC 4271 §4.5).
pub fn notification_code(n: &Notification) -> (u8, u8) {
    match n {
        Notification::MessageHeaderError(e) => (
            1,
            match e {
                MessageHeaderError::Unspecific { .. } => 0,
                MessageHeaderError::ConnectionNotSynchronized { .. } => 1,
                MessageHeaderError::BadMessageLength { .. } => 2,
                MessageHeaderError::BadMessageType { .. } => 3,
            },
        ),
        Notification::OpenMessageError(e) => (
            2,
            match e {
                OpenMessageError::Unspecific { .. } => 0,
                OpenMessageError::UnsupportedVersionNumber { .. } => 1,
                OpenMessageError::BadPeerAs { .. } => 2,
                OpenMessageError::BadBgpIdentifier { .. } => 3,
                OpenMessageError::UnsupportedOptionalParameter { .. } => 4,
                OpenMessageError::UnacceptableHoldTime { .. } => 6,
                OpenMessageError::UnsupportedCapability { .. } => 7,
                OpenMessageError::RoleMismatch { .. } => 11,
            },
        ),
        Notification::UpdateMessageError(e) => (
            3,
            match e {
                UpdateMessageError::Unspecific { .. } => 0,
                UpdateMessageError::MalformedAttributeList { .. } => 1,
                UpdateMessageError::UnrecognizedWellKnownAttribute { .. } => 2,
                UpdateMessageError::MissingWellKnownAttribute { .. } => 3,
                UpdateMessageError::AttributeFlagsError { .. } => 4,
                UpdateMessageError::AttributeLengthError { .. } => 5,
                UpdateMessageError::InvalidOriginAttribute { .. } => 6,
                UpdateMessageError::InvalidNextHopAttribute { .. } => 8,
                UpdateMessageError::OptionalAttributeError { .. } => 9,
                UpdateMessageError::InvalidNetworkField { .. } => 10,
                UpdateMessageError::MalformedAsPath { .. } => 11,
            },
        ),
        Notification::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
            sub_code, ..
        }) => (4, *sub_code),
        Notification::FiniteStateMachineError(e) => (
            5,
            match e {
                FiniteStateMachineError::Unspecific { .. } => 0,
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { .. } => 1,
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { .. } => 2,
                FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { .. } => 3,
            },
        ),
        Notification::CeaseError(e) => (
            6,
            match e {
                CeaseError::MaximumNumberOfPrefixesReached { .. } => 1,
                CeaseError::AdministrativeShutdown { .. } => 2,
                CeaseError::PeerDeConfigured { .. } => 3,
                CeaseError::AdministrativeReset { .. } => 4,
                CeaseError::ConnectionRejected { .. } => 5,
                CeaseError::OtherConfigurationChange { .. } => 6,
                CeaseError::ConnectionCollisionResolution { .. } => 7,
                CeaseError::OutOfResources { .. } => 8,
                CeaseError::HardReset { .. } => 9,
                CeaseError::BfdDown { .. } => 10,
            },
        ),
        Notification::RouteRefreshError(_) => (7, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_marker_and_bad_length_are_header_errors() {
        let mut header = [0xffu8; HEADER_LEN];
        header[16] = 0;
        header[17] = 10;
        let err = frame_length(&header).unwrap_err();
        assert_eq!(notification_code(&err), (1, 2));
        header[0] = 0;
        assert_eq!(
            notification_code(&frame_length(&header).unwrap_err()),
            (1, 1)
        );
    }

    #[test]
    fn unknown_type_and_truncated_body_give_notifications() {
        let mut msg = encode(&BgpMessage::KeepAlive).expect("encodes");
        msg[18] = 9;
        assert_eq!(notification_code(&decode(&msg, true).unwrap_err()), (1, 3));
        // An OPEN that stops after its version byte.
        let mut open = vec![0xff; 16];
        open.extend_from_slice(&[0, 20, 1, 4]);
        let err = decode(&open, true).unwrap_err();
        assert_eq!(notification_code(&err).0, 2);
    }

    #[test]
    fn garbage_never_panics() {
        // Every length and a spread of byte patterns after a valid header.
        for ty in 1..=5u8 {
            for len in 19..80usize {
                for fill in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut msg = vec![0xff; 16];
                    msg.extend_from_slice(&(len as u16).to_be_bytes());
                    msg.push(ty);
                    msg.resize(len, fill);
                    let _ = decode(&msg, true);
                    let _ = decode(&msg, false);
                }
            }
        }
    }
}

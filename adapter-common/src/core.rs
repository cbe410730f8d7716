//! The bridge from the operator's config to the broker core: limits mapped onto
//! `broker_state::Config`. (Who a client is gets decided in
//! [`crate::authentication`], off the broker's thread.)

use crate::config::Limits;

/// The core's config: its defaults, with every limit the operator set applied
/// (the mapping is the limits table, [`crate::limits`]).
pub fn broker_config(limits: &Limits) -> broker_state::Config {
    let mut c = broker_state::Config::default();
    limits.apply_to(&mut c);
    c
}

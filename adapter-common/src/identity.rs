//! Who a client is: Event Grid's identity model.

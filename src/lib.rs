//! vaultgate
pub mod pb {
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod vaultgate {
        pub mod v1 {
            tonic::include_proto!("vaultgate.v1");
        }
    }
}

//! tenantsync: a declarative GitOps reconciler for healthcare-API tenant workspaces.

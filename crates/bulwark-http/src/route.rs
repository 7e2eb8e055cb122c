//! What a service says about each of its routes: the metric label and who may call it.

use axum::http::Method;

/// A credential's role. Each includes the ones before it: `admin` ⊃ `write` ⊃ `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Data reads.
    Read,
    /// Data writes and purchases, and reads.
    Write,
    /// Everything: admin endpoints, chaos, the control API.
    Admin,
}

impl Role {
    /// `read`, `write`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (read, write or admin)")),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without credentials: health checks (load balancers) and the
    /// OpenAPI document.
    Open,
    /// A credential with at least this role.
    Needs(Role),
}

/// One route as the security and observability layers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The metric label (`write`, `read`, `purchase`, `health`, …).
    pub operation: &'static str,
    /// Who may call it.
    pub access: Access,
}

impl Route {
    /// A route anyone may call.
    pub const fn open(operation: &'static str) -> Route {
        Route {
            operation,
            access: Access::Open,
        }
    }

    /// A route that needs `role`.
    pub const fn needs(operation: &'static str, role: Role) -> Route {
        Route {
            operation,
            access: Access::Needs(role),
        }
    }

    /// Whether a call with `method` is written to the audit log: writes, purchases and
    /// admin actions, which change state (reads are not, admin reads neither: a control
    /// plane that polls its fault proxy every second would bury the actions; refused
    /// authentications always are).
    pub fn audited(&self, method: &Method) -> bool {
        match self.access {
            Access::Needs(Role::Write) => true,
            Access::Needs(Role::Admin) => !method.is_safe(),
            _ => false,
        }
    }
}

/// A service's routes: `(method, matched route template or None) → Route`. A path no
/// route matches gets `None`, and should need [`Role::Read`] (so an anonymous client
/// cannot tell which paths exist).
pub type Classify = fn(&Method, Option<&str>) -> Route;

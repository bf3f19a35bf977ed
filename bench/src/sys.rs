//! The two operating-system knobs a load generator needs and neither tokio
//! nor socket2 exposes: the open-files limit and IP_BIND_ADDRESS_NO_PORT.

use std::io;

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

/// Lets `bind(addr, 0)` leave the port to `connect`, which picks one free
/// for that destination: with it a source address serves the whole
/// ephemeral range per destination instead of exhausting it at bind time.
#[cfg(target_os = "linux")]
pub fn bind_address_no_port(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is a live socket owned by the caller; the
    // option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn bind_address_no_port<T>(_socket: &T) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_limit_is_readable() {
        assert!(matches!(raise_nofile_limit(), Ok(n) if n > 0));
    }

    #[test]
    fn bind_no_port_on_a_tcp_socket() {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(error) => panic!("{error}"),
        };
        assert!(bind_address_no_port(&socket).is_ok());
    }
}

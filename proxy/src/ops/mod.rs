//! Running the gateway: the command line (`cli`), host checks (`doctor`) and systemd
//! notifications (`sdnotify`).

pub mod cli;
pub mod doctor;
pub mod sdnotify;

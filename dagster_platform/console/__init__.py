"""The ops console: one page for the on-call engineer (chat, approvals, feedback, incidents and
the loop), mounted on the HTTP API at `/ui`. Every step it takes goes through the same
server-side functions as the CLI and the API, as the signed-in user."""

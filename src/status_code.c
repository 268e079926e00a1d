/* The table of enhanced status codes (see status_code.h). */
#include "facteur/status_code.h"

#include "facteur/log.h"

/* Indexed by enum status_code; the unit test checks that each row's
 * class matches its code's first digit. */
static const struct status_code_def table[STATUS_CODE_COUNT] = {
    [STATUS_OK] = {"2.0.0", STATUS_CLASS_SUCCESS, "Other or undefined status"},
    [STATUS_SENDER_OK] = {"2.1.0", STATUS_CLASS_SUCCESS,
			  "Other address status"},
    [STATUS_RCPT_OK] = {"2.1.5", STATUS_CLASS_SUCCESS,
			"Destination address valid"},
    [STATUS_VRFY] = {"2.5.2", STATUS_CLASS_SUCCESS, "Syntax error"},
    [STATUS_AUTH_OK] = {"2.7.0", STATUS_CLASS_SUCCESS,
			"Other or undefined security status"},
    [STATUS_MAILBOX_UNAVAILABLE] = {"4.2.0", STATUS_CLASS_TRANSIENT,
				    "Other or undefined mailbox status"},
    [STATUS_MAILBOX_BUSY] = {"4.2.1", STATUS_CLASS_TRANSIENT,
			     "Mailbox disabled, not accepting messages"},
    [STATUS_LOCAL_ERROR] = {"4.3.0", STATUS_CLASS_TRANSIENT,
			    "Other or undefined mail system status"},
    [STATUS_SYSTEM_STORAGE] = {"4.3.1", STATUS_CLASS_TRANSIENT,
			       "Mail system full"},
    [STATUS_SHUTDOWN] = {"4.3.2", STATUS_CLASS_TRANSIENT,
			 "System not accepting network messages"},
    [STATUS_SYSTEM_CONGESTED] = {"4.3.5", STATUS_CLASS_TRANSIENT,
				 "System incorrectly configured"},
    [STATUS_NO_ANSWER] = {"4.4.1", STATUS_CLASS_TRANSIENT,
			  "No answer from host"},
    [STATUS_BAD_CONNECTION] = {"4.4.2", STATUS_CLASS_TRANSIENT,
			       "Bad connection"},
    [STATUS_ROUTING_FAILED] = {"4.4.3", STATUS_CLASS_TRANSIENT,
			       "Directory server failure"},
    [STATUS_ROUTING_UNAVAILABLE] = {"4.4.4", STATUS_CLASS_TRANSIENT,
				    "Unable to route"},
    [STATUS_LOOP_TRANSIENT] = {"4.4.6", STATUS_CLASS_TRANSIENT,
			       "Routing loop detected"},
    [STATUS_EXPIRED] = {"4.4.7", STATUS_CLASS_TRANSIENT,
			"Delivery time expired"},
    [STATUS_TOO_MANY_RCPTS] = {"4.5.3", STATUS_CLASS_TRANSIENT,
			       "Too many recipients"},
    [STATUS_SECURITY_TRANSIENT] = {"4.7.0", STATUS_CLASS_TRANSIENT,
				   "Other or undefined security status"},
    [STATUS_NOT_AUTHORIZED_TRANSIENT] = {"4.7.1", STATUS_CLASS_TRANSIENT,
					 "Delivery not authorized"},
    [STATUS_TLS_UNAVAILABLE] = {"4.7.4", STATUS_CLASS_TRANSIENT,
				"Security features not supported"},
    [STATUS_TLS_FAILED] = {"4.7.5", STATUS_CLASS_TRANSIENT,
			   "Cryptographic failure"},
    [STATUS_AUTH_REJECTED_TRANSIENT] = {"4.7.8", STATUS_CLASS_TRANSIENT,
					"Authentication credentials invalid"},
    [STATUS_PERMANENT_ERROR] = {"5.0.0", STATUS_CLASS_PERMANENT,
				"Other undefined status"},
    [STATUS_BAD_MAILBOX] = {"5.1.1", STATUS_CLASS_PERMANENT,
			    "Bad destination mailbox address"},
    [STATUS_BAD_SYSTEM] = {"5.1.2", STATUS_CLASS_PERMANENT,
			   "Bad destination system address"},
    [STATUS_BAD_RCPT_SYNTAX] = {"5.1.3", STATUS_CLASS_PERMANENT,
				"Bad destination mailbox address syntax"},
    [STATUS_BAD_SENDER_SYNTAX] = {"5.1.7", STATUS_CLASS_PERMANENT,
				  "Bad sender's mailbox address syntax"},
    [STATUS_NULL_MX] = {"5.1.10", STATUS_CLASS_PERMANENT,
			"Recipient address has null MX"},
    [STATUS_SYSTEM_PERMANENT] = {"5.3.0", STATUS_CLASS_PERMANENT,
				 "Other or undefined mail system status"},
    [STATUS_TOO_BIG] = {"5.3.4", STATUS_CLASS_PERMANENT,
			"Message too big for system"},
    [STATUS_LOOP] = {"5.4.6", STATUS_CLASS_PERMANENT, "Routing loop detected"},
    [STATUS_BAD_COMMAND] = {"5.5.1", STATUS_CLASS_PERMANENT, "Invalid command"},
    [STATUS_SYNTAX_ERROR] = {"5.5.2", STATUS_CLASS_PERMANENT, "Syntax error"},
    [STATUS_BAD_ARGS] = {"5.5.4", STATUS_CLASS_PERMANENT,
			 "Invalid command arguments"},
    [STATUS_NEEDS_UTF8] = {"5.6.7", STATUS_CLASS_PERMANENT,
			   "Non-ASCII addresses not permitted for that "
			   "sender/recipient"},
    [STATUS_SECURITY_PERMANENT] = {"5.7.0", STATUS_CLASS_PERMANENT,
				   "Other or undefined security status"},
    [STATUS_NOT_AUTHORIZED] = {"5.7.1", STATUS_CLASS_PERMANENT,
			       "Delivery not authorized, message refused"},
    [STATUS_AUTH_FAILED] = {"5.7.8", STATUS_CLASS_PERMANENT,
			    "Authentication credentials invalid"},
    [STATUS_ENCRYPTION_REQUIRED] = {"5.7.11", STATUS_CLASS_PERMANENT,
				    "Encryption required for requested "
				    "authentication mechanism"},
    [STATUS_ENCRYPTION_NEEDED] = {"5.7.10", STATUS_CLASS_PERMANENT,
				  "Encryption needed"},
};

const struct status_code_def *status_code_def(enum status_code code)
{
	if ((unsigned)code >= STATUS_CODE_COUNT || table[code].code == NULL)
		fatal("status_code: no row for code %d", (int)code);
	return &table[code];
}

const char *status_code_str(enum status_code code)
{
	return status_code_def(code)->code;
}

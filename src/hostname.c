/* Host name syntax (see hostname.h). */
#include "facteur/hostname.h"

#include "facteur/ascii.h"

bool hostname_valid(const char *s, size_t len)
{
	size_t label = 0;

	if (len == 0 || len > HOSTNAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!ascii_is_ldh(s[i]) || (s[i] == '-' && label == 0))
			return false;
		if (++label > HOSTNAME_LABEL_MAX)
			return false;
	}
	return label > 0 && s[len - 1] != '-';
}

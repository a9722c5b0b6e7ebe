"""What each column is: the source's type mapped to the file's (``typemap``, pure functions), and
the driver's Arrow turned into the file's Arrow, exactly or refused, with the transform (``conversions``)."""
